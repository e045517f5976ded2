#!/usr/bin/env python3
"""Build blocksparse with AddressSanitizer + UBSan and run tests and a fuzz run under it.

Steps:

1. copy the source tree (``git ls-files``, untracked files included, ignored
   ones not) to a temporary directory, so the caller's in-place build is
   left alone;
2. build it in place there with ``BLOCKSPARSE_SANITIZE=address,undefined``
   (setup.py then compiles and links with ``-fsanitize=...``, ``-O1 -g``)
   and ``CFLAGS=-fno-wrapv`` (Python's own ``-fwrapv`` would switch off
   UBSan's signed-overflow check);
3. run a subset of the test suite and ``tests/test_fuzz.py`` with
   ``BLOCKSPARSE_FUZZ_EXAMPLES`` examples per fuzz test, in parallel, with
   ``LD_PRELOAD`` set to the compiler's libasan (Python itself is not
   instrumented), ``PYTHONMALLOC=malloc`` (so ASan sees every allocation),
   ``ASAN_OPTIONS=detect_leaks=0`` (the interpreter's leaks are noise) and
   ``UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1``;
4. fail on any sanitizer report (reports go to log files, so one from any
   process counts) or any test failure.

The last line printed is ``SANITIZE_RESULT {json}`` with the counts and
times.  Exit status: 0 clean, 1 failure or sanitizer report, 77 the
toolchain cannot build with sanitizers (gcc and libasan are needed).

Usage::

    python scripts/sanitize_run.py [--fuzz-examples 2000] [--timeout 1500]
                                   [--tests tests/test_int8.py ...] [--keep]
"""
import argparse
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANITIZERS = "address,undefined"
DEFAULT_TESTS = ["tests/test_int8.py", "tests/test_quant.py", "tests/test_products_float.py",
                 "tests/test_matrix.py", "tests/test_io.py", "tests/test_prune.py",
                 "tests/test_outputs_written.py", "tests/test_dense.py",
                 "tests/test_nn_attention_int8.py", "tests/test_nn_layer_call.py"]
FUZZ_TESTS = ["tests/test_fuzz.py"]
SKIP = 77


def log(msg):
    print(f"[sanitize] {msg}", flush=True)


def compiler():
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


def find_toolchain():
    """(libasan path, None) if gcc can build and run with ASan + UBSan, else (None, reason)."""
    if not sys.platform.startswith("linux"):
        return None, f"sanitizer runs need Linux (this is {sys.platform})"
    cc = compiler()
    try:
        version = subprocess.run(cc + ["--version"], capture_output=True, text=True,
                                 timeout=60).stdout
        lib = subprocess.run(cc + ["-print-file-name=libasan.so"], capture_output=True,
                             text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"no C compiler ({' '.join(cc)}): {exc}"
    if "clang" in version.lower() or "free software foundation" not in version.lower():
        return None, f"{' '.join(cc)} is not gcc (LD_PRELOAD of libasan needs gcc's runtime)"
    if not os.path.isabs(lib) or not os.path.exists(lib):
        return None, f"{' '.join(cc)} has no libasan.so (install libasan, e.g. the gcc package)"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("int main(void){return 0;}\n")
        res = subprocess.run(cc + [f"-fsanitize={SANITIZERS}", src, "-o",
                                   os.path.join(tmp, "probe")], capture_output=True, text=True)
        if res.returncode:
            return None, f"{' '.join(cc)} cannot link with -fsanitize={SANITIZERS}: " \
                         f"{res.stderr.strip()[-300:]}"
    return os.path.realpath(lib), None


def source_files(root):
    """Files of the tree: git's list (tracked and untracked, not ignored) or a plain walk."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=root, capture_output=True,
                             check=True, timeout=60).stdout
        files = [f for f in out.decode().split("\0") if f and not f.startswith(".venv")]
        if files:
            return [f for f in files if os.path.isfile(os.path.join(root, f))]
    except (OSError, subprocess.SubprocessError):
        pass
    skip_dirs = {".git", "build", ".venv", "__pycache__", ".hypothesis", ".pytest_cache"}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs and not d.startswith(".venv")
                       and not d.endswith(".egg-info")]
        for name in filenames:
            if not name.endswith((".so", ".o", ".a", ".pyc")):
                files.append(os.path.relpath(os.path.join(dirpath, name), root))
    return files


def copy_tree(root, dest):
    files = source_files(root)
    for rel in files:
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(root, rel), target)
    # an in-place build from the caller's tree must not shadow the sanitized one
    for so in glob.glob(os.path.join(dest, "blocksparse", "*.so")):
        os.remove(so)
    return len(files)


def _have_build_requirements():
    try:
        import Cython  # noqa: F401
        import numpy  # noqa: F401
        import setuptools  # noqa: F401
    except ImportError:
        return False
    return True


def build(src, timeout, builder="auto"):
    """Build the extension in place in `src` with the sanitizers; returns the .so path."""
    env = dict(os.environ, BLOCKSPARSE_SANITIZE=SANITIZERS,
               CFLAGS=(os.environ.get("CFLAGS", "") + " -fno-wrapv").strip())
    env.pop("BLOCKSPARSE_NATIVE", None)
    logfile = os.path.join(src, "sanitize_build.log")
    if builder == "setup" or builder == "auto" and _have_build_requirements():
        cmd = [sys.executable, "setup.py", "build_ext", "--inplace"]
        how = "setup.py build_ext --inplace"
    else:
        # e.g. a venv made by `pip install -e .`: Cython lived only in pip's isolated
        # build environment, so let pip build a wheel the same way and unpack the extension
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w",
               os.path.join(src, "_wheel"), src]
        how = "pip wheel (isolated build environment)"
    log(f"building with -fsanitize={SANITIZERS} via {how}")
    with open(logfile, "w") as f:
        res = subprocess.run(cmd, cwd=src, env=env, stdout=f, stderr=subprocess.STDOUT,
                             timeout=timeout)
    if res.returncode:
        with open(logfile) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"sanitizer build failed ({how}):\n{tail}")
    if "wheel" in how:
        wheels = glob.glob(os.path.join(src, "_wheel", "blocksparse-*.whl"))
        with zipfile.ZipFile(wheels[0]) as whl:
            for name in whl.namelist():
                if name.startswith("blocksparse/") and name.endswith(".so"):
                    whl.extract(name, src)
    sos = glob.glob(os.path.join(src, "blocksparse", "_kernels*.so"))
    if len(sos) != 1:
        raise RuntimeError(f"expected one blocksparse/_kernels*.so after the build, got {sos}")
    with open(sos[0], "rb") as f:
        binary = f.read()
    for marker, what in ((b"libasan", "linked with libasan"),
                         (b"__asan_report", "instrumented by AddressSanitizer"),
                         (b"__ubsan_handle", "instrumented by UBSan")):
        if marker not in binary:
            raise RuntimeError(f"{sos[0]} is not {what}: the BLOCKSPARSE_SANITIZE switch of "
                               f"setup.py did not reach the compile or link step")
    return sos[0]


def check_harness(libasan, tmp):
    """An overflow made on purpose is caught and logged: the set-up really detects errors."""
    logdir = os.path.join(tmp, "harness")
    os.makedirs(logdir)
    code = ("import ctypes; libc = ctypes.CDLL(None); "
            "libc.malloc.restype = ctypes.c_void_p; libc.malloc.argtypes = [ctypes.c_size_t]; "
            "libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]; "
            "libc.memset(libc.malloc(16), 0, 17)")
    res = subprocess.run([sys.executable, "-c", code], env=sanitizer_env(libasan, logdir, 0),
                         capture_output=True, text=True, timeout=120)
    found = any("heap-buffer-overflow" in text for _, text in sanitizer_reports(logdir))
    if res.returncode == 0 or not found:
        raise RuntimeError("AddressSanitizer did not report a deliberate heap overflow "
                           f"(exit {res.returncode}): the LD_PRELOAD set-up does not work")


def sanitizer_env(libasan, logdir, fuzz_examples):
    env = dict(os.environ)
    for var in ("BLOCKSPARSE_ISA", "BLOCKSPARSE_MAX_ISA", "PYTHONPATH"):
        env.pop(var, None)
    env.update(
        LD_PRELOAD=" ".join(filter(None, [libasan, os.environ.get("LD_PRELOAD")])),
        ASAN_OPTIONS=":".join(["detect_leaks=0", "halt_on_error=1", "abort_on_error=0",
                               "allocator_may_return_null=1", "detect_odr_violation=0",
                               f"log_path={os.path.join(logdir, 'asan')}"]),
        UBSAN_OPTIONS=":".join(["halt_on_error=1", "print_stacktrace=1",
                                f"log_path={os.path.join(logdir, 'ubsan')}"]),
        PYTHONMALLOC="malloc",
        PYTHONDONTWRITEBYTECODE="1",
        BLOCKSPARSE_HYPOTHESIS_PROFILE=os.environ.get("BLOCKSPARSE_HYPOTHESIS_PROFILE", "dev"),
        BLOCKSPARSE_FUZZ_EXAMPLES=str(fuzz_examples),
        BLOCKSPARSE_SANITIZER_RUN="1",  # tests/test_sanitizer.py must not recurse
    )
    return env


def check_import(src, env):
    """The sanitized extension from `src` is the one imported, and it runs."""
    code = ("import blocksparse, blocksparse._kernels as k, numpy as np; "
            "W = blocksparse.BlockSparseMatrix(np.eye(4, dtype=np.float32)); "
            "assert (W @ np.ones((4, 2), np.float32)).sum() == 8; print(k.__file__)")
    res = subprocess.run([sys.executable, "-c", code], cwd=src, env=env, capture_output=True,
                         text=True, timeout=120)
    if res.returncode or not os.path.realpath(res.stdout.strip()).startswith(
            os.path.realpath(src)):
        raise RuntimeError(f"the sanitized build does not import from {src}:\n"
                           f"{res.stdout}\n{res.stderr[-3000:]}")


def run_parallel(jobs, src, env, timeout, jobs_at_once):
    """Run {name: argv} pytest jobs, at most `jobs_at_once` at a time; {name: (rc, out, s)}."""
    pending = list(jobs.items())
    running, results = {}, {}
    deadline = time.monotonic() + timeout
    while pending or running:
        while pending and len(running) < jobs_at_once:
            name, argv = pending.pop(0)
            out = open(os.path.join(src, f"sanitize_{name}.log"), "w+")
            log(f"running {name}: {' '.join(argv)}")
            proc = subprocess.Popen([sys.executable, *argv], cwd=src, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            running[name] = (proc, out, time.monotonic())
        time.sleep(0.5)
        for name, (proc, out, t0) in list(running.items()):
            if proc.poll() is None and time.monotonic() < deadline:
                continue
            if proc.poll() is None:  # out of time: stop the whole process group
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = "timeout"
            else:
                rc = proc.returncode
            out.seek(0)
            results[name] = (rc, out.read(), time.monotonic() - t0)
            out.close()
            del running[name]
            log(f"{name} finished: exit {rc} after {results[name][2]:.0f} s")
    return results


def sanitizer_reports(logdir):
    reports = []
    for path in sorted(glob.glob(os.path.join(logdir, "*"))):
        with open(path, errors="replace") as f:
            text = f.read()
        if text.strip():
            reports.append((os.path.basename(path), text))
    return reports


def pytest_summary(out):
    """The final 'N passed, ...' line of a pytest run, and the passed count."""
    lines = re.findall(r"^=*\s*((?:\d+ (?:passed|failed|error|errors|skipped|deselected|"
                       r"xfailed|xpassed)[, ]*)+.*?)\s*=*$", out, re.M)
    line = lines[-1] if lines else "no pytest summary (crashed?)"
    passed = re.search(r"(\d+) passed", line)
    return line, int(passed.group(1)) if passed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fuzz-examples", type=int, default=2000,
                        help="examples per fuzz test (BLOCKSPARSE_FUZZ_EXAMPLES)")
    parser.add_argument("--tests", nargs="*", default=DEFAULT_TESTS,
                        help="test files of the suite to run (the fuzz tests run too)")
    parser.add_argument("--no-fuzz", action="store_true", help="skip tests/test_fuzz.py")
    parser.add_argument("--timeout", type=float, default=1500,
                        help="seconds for the build and the runs together")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="pytest runs at the same time")
    parser.add_argument("--builder", choices=["auto", "setup", "pip"], default="auto",
                        help="setup.py in this interpreter (needs Cython) or pip wheel; auto: "
                             "setup.py if Cython is importable")
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree")
    parser.add_argument("--workdir", help="where to make the temporary tree")
    args = parser.parse_args(argv)
    t_start = time.monotonic()

    libasan, why = find_toolchain()
    if libasan is None:
        log(f"SKIP: {why}")
        print("SANITIZE_RESULT " + json.dumps({"skipped": why}))
        return SKIP
    tmp = tempfile.mkdtemp(prefix="blocksparse-sanitize-", dir=args.workdir)
    src = os.path.join(tmp, "src")
    logdir = os.path.join(tmp, "reports")
    os.makedirs(src)
    os.makedirs(logdir)
    result = {"libasan": libasan, "workdir": tmp}
    ok = False
    try:
        check_harness(libasan, tmp)
        log(f"AddressSanitizer ({libasan}) catches a deliberate heap overflow")
        n = copy_tree(ROOT, src)
        log(f"copied {n} files to {src}")
        t0 = time.monotonic()
        build(src, timeout=args.timeout, builder=args.builder)
        result["build_s"] = round(time.monotonic() - t0, 1)
        log(f"built in {result['build_s']} s")
        env = sanitizer_env(libasan, logdir, args.fuzz_examples)
        check_import(src, env)

        common = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]
        jobs = {"suite": common + list(args.tests)}
        if not args.no_fuzz:
            jobs["fuzz"] = common + FUZZ_TESTS
        remaining = args.timeout - (time.monotonic() - t_start)
        results = run_parallel(jobs, src, env, remaining, max(1, args.jobs))

        reports = sanitizer_reports(logdir)
        result["sanitizer_reports"] = len(reports)
        ok = not reports
        for name, (rc, out, secs) in results.items():
            line, passed = pytest_summary(out)
            result[name] = {"exit": rc, "summary": line, "passed": passed,
                            "seconds": round(secs, 1)}
            if name == "fuzz":
                m = re.search(r"^fuzz: (\d+) examples over (\d+) tests.*$", out, re.M)
                result["fuzz_examples"] = int(m.group(1)) if m else 0
                result["fuzz_line"] = m.group(0) if m else ""
            if rc != 0:
                ok = False
                log(f"{name} FAILED (exit {rc}); last lines:\n" +
                    "\n".join(out.strip().splitlines()[-60:]))
        for fname, text in reports:
            log(f"SANITIZER REPORT {fname}:\n{text[-8000:]}")
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        result["error"] = str(exc)
        log(f"FAILED: {exc}")
    finally:
        result["total_s"] = round(time.monotonic() - t_start, 1)
        result["ok"] = ok
        if not args.keep and ok:
            shutil.rmtree(tmp, ignore_errors=True)
        elif not ok:
            log(f"kept {tmp} for inspection")
    print("SANITIZE_RESULT " + json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
