"""How much memory a new allocation may use, to refuse absurd sizes before allocating.

Allocations sized by a number the user declared (a configuration, not data
already in memory) are checked against this first: Linux overcommits, so
``numpy.empty`` of 50 GB succeeds and the process is killed later, or the
machine swaps.
"""
import os

__all__ = ["available_bytes", "format_bytes", "ensure_available"]

# Below this an allocation is not checked (reading /proc costs microseconds per call).
_CHECK_FROM = 1 << 28


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_headroom():
    """limit - usage of this process's memory cgroup (v2, then v1), or None."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim, use = _read_int(limit), _read_int(usage)
        if lim is not None and use is not None and lim < 1 << 60:  # "no limit" is ~2**63
            return max(0, lim - use)
    return None


def available_bytes():
    """Bytes a new allocation can use without swapping, or None if unknown.

    Linux: ``MemAvailable`` of ``/proc/meminfo``, capped by the memory
    cgroup's limit minus its usage (containers); elsewhere the free pages
    (``SC_AVPHYS_PAGES``) if the OS reports them.
    """
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    headroom = _cgroup_headroom()
    return avail if headroom is None else min(avail, headroom)


def format_bytes(n):
    """``1.5 GB`` style."""
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def ensure_available(nbytes, what):
    """Raise MemoryError before allocating `nbytes` that the machine does not have.

    Parameters
    ----------
    nbytes : int
        The size of the allocation about to be made.
    what : str
        What it is for, e.g. ``"the (M, N) float32 result"``.

    Raises
    ------
    MemoryError
        If `nbytes` exceeds :func:`available_bytes` (checked only from 256 MB on).
    """
    if nbytes < _CHECK_FROM:
        return
    avail = available_bytes()
    if avail is not None and nbytes > avail:
        raise MemoryError(f"{what} needs {format_bytes(nbytes)}, more than the "
                          f"{format_bytes(avail)} of memory available")
