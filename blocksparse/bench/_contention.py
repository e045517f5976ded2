"""Busy-looping processes beside a benchmark: how the runtimes bear a shared machine."""
import contextlib
import subprocess
import sys
import time

_LOOP = "while True:\n    pass\n"


@contextlib.contextmanager
def busy_processes(count, settle=0.3):
    """Run `count` processes that spin on a CPU each for the duration of the block.

    They are plain Python loops (``sys.executable -c``), started before the
    block, given `settle` seconds to get scheduled, and killed and reaped
    afterwards, also on errors.  Their CPU time is that of this process's
    children, so :class:`._common.LoadMonitor` does not count them as other
    work.
    """
    procs = []
    try:
        for _ in range(count):
            procs.append(subprocess.Popen([sys.executable, "-c", _LOOP],
                                          stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        if procs:
            time.sleep(settle)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
