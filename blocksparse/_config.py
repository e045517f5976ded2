"""Run-time configuration: which ISA variant runs the kernels, and threads.

Environment variables, read once at import:

``BLOCKSPARSE_ISA``
    Force one variant (``scalar``, ``avx2``, ``avx_vnni``, ``avx512_vnni``).
    A misspelt name, or a variant this build or CPU lacks, is an error at
    the first kernel call (never at import).
``BLOCKSPARSE_MAX_ISA``
    Cap the variant: the best available one not above the cap is used.
``BLOCKSPARSE_NUM_THREADS``
    Threads for the kernels, 1 to 4096; otherwise OpenMP's
    default (``OMP_NUM_THREADS`` or the number of cores).  A bad value is
    ignored with a :class:`RuntimeWarning`, as OpenMP treats its own.
``BLOCKSPARSE_VERBOSE``
    ``1`` logs every INT8 kernel call (kernel name, ISA, shape) to stderr.

Thread safety: :func:`set_isa`, :func:`set_max_isa` and
:func:`set_num_threads` change process-wide settings under a lock;
:func:`isa_context` overrides the ISA for the current thread (or asyncio
task) only, through a :mod:`contextvars` variable, so threads never see
each other's contexts.

Fork safety: GNU OpenMP cannot start threads in a child forked after the
parent ran a parallel region (the child hangs).  A process forked after
this package handed a kernel more than one thread therefore runs its
kernels on one thread (see ``docs/guarantees.rst``).
"""
import contextlib
import contextvars
import operator
import os
import platform
import sys
import threading
import warnings

try:
    from . import _kernels
except ImportError:
    import importlib.util
    if importlib.util.find_spec(__package__ + "._kernels") is not None:
        raise
    # "python -m blocksparse" in a clone imports the source tree in the current directory
    # (first on sys.path), which has no compiled kernels even when the package is installed
    raise ImportError(
        f"blocksparse is being imported from {os.path.dirname(os.path.abspath(__file__))}, "
        f"which has no compiled kernels (a source tree that was not built in place). Run "
        f"from another directory to use the installed package, or use the 'blocksparse' "
        f"command, or build in place with 'pip install -e .'") from None

ISA_NAMES = _kernels.ISA_NAMES  # ("scalar", "avx2", "avx_vnni", "avx512_vnni")
_ALIASES = {"ref": "scalar", "avxvnni": "avx_vnni", "avx512vnni": "avx512_vnni",
            "avx512": "avx512_vnni"}

__all__ = ["get_isa", "set_isa", "set_max_isa", "isa_context", "available_isas",
           "get_num_threads", "set_num_threads", "show_config"]

# The largest thread count :func:`set_num_threads` accepts.  GNU OpenMP
# aborts the process when it cannot create a thread, so absurd counts are
# refused before they reach it.
MAX_THREADS = 4096


def _parse_isa(name, argname):
    if not isinstance(name, str):
        raise TypeError(f"{argname} must be a string naming an ISA, got {type(name).__name__}")
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in ISA_NAMES:
        raise ValueError(f"{argname}={name!r} is not an ISA variant; expected one of "
                         f"{', '.join(ISA_NAMES)}")
    return ISA_NAMES.index(key)


def _usable(isa):
    return _kernels.isa_built(isa) and _kernels.isa_detected(isa)


def available_isas():
    """ISA variants that are both compiled in and supported by this CPU.

    Returns
    -------
    list of str
        From the portable ``"scalar"`` reference up to the best variant.
    """
    return [ISA_NAMES[i] for i in range(len(ISA_NAMES)) if _usable(i)]


class _State:
    """Process-wide settings; writers hold _LOCK."""
    forced = None      # index forced by set_isa / BLOCKSPARSE_ISA
    forced_from = ""   # where the forcing came from, for error messages
    cap = None         # index cap from set_max_isa / BLOCKSPARSE_MAX_ISA
    num_threads = None
    verbose = False
    # BLOCKSPARSE_ISA / _MAX_ISA values that name no variant: variable -> message,
    # raised by every kernel call until set_isa / set_max_isa replace the setting
    isa_env_errors = {}
    env_problems = {}  # every rejected environment variable -> message (for the CLI)
    teams_started = False  # a kernel was handed more than one thread in this process
    fork_limited = False   # forked after that: OpenMP cannot start threads here


_LOCK = threading.RLock()  # RLock: a warning raised under it may call back in
# the stack of (isa index, source) entries of the isa_contexts entered by the current
# thread or task; the last one is in force
_ISA_OVERRIDE = contextvars.ContextVar("blocksparse_isa_override", default=())


def _read_environment():
    with _LOCK:
        _State.isa_env_errors = {}
        _State.env_problems = {}
        for var in ("BLOCKSPARSE_ISA", "BLOCKSPARSE_MAX_ISA"):
            value = os.environ.get(var, "").strip()
            if not value:
                continue
            try:
                isa = _parse_isa(value, var)
            except ValueError as exc:
                # reported at the first kernel call, so that `import blocksparse` and
                # `python -m blocksparse info` still work and can say what is wrong
                _State.isa_env_errors[var] = _State.env_problems[var] = str(exc)
                continue
            if var == "BLOCKSPARSE_ISA":
                _State.forced, _State.forced_from = isa, var
            else:
                _State.cap = isa
        _read_threads_env()
        _read_adaptive_env()
        _State.verbose = os.environ.get("BLOCKSPARSE_VERBOSE", "").strip() not in ("", "0")


_SWITCH = {"1": True, "on": True, "true": True, "yes": True,
           "0": False, "off": False, "false": False, "no": False}


def _read_adaptive_env():
    """Apply BLOCKSPARSE_ADAPTIVE_THREADS (on/off; else warn and keep it on)."""
    value = os.environ.get("BLOCKSPARSE_ADAPTIVE_THREADS", "").strip()
    if not value:
        _kernels.set_adaptive_threads(True)
        return
    on = _SWITCH.get(value.lower())
    if on is None:
        msg = (f"BLOCKSPARSE_ADAPTIVE_THREADS={value!r} must be 1/on or 0/off; ignored "
               f"(adaptive threads stay on)")
        _State.env_problems["BLOCKSPARSE_ADAPTIVE_THREADS"] = msg
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        on = True
    _kernels.set_adaptive_threads(on)


def set_adaptive_threads(on):
    """Turn the one-thread fallback for a busy machine on or off (process-wide).

    When other processes share the cores, one of a kernel's threads is
    often descheduled for a whole scheduler slice while the others wait
    for it.  A parallel region whose threads started or ended more than a
    millisecond apart (and apart by more than half its length) was held
    up; four among the last 64 make the following kernel calls run on one
    thread for 10 ms, doubled while it keeps happening up to 1.28 s, before
    :func:`get_num_threads` threads are tried again.  One thread wins only
    with a core to itself: while on one thread, the calling thread reads its
    own scheduler statistics (Linux's ``/proc/thread-self/schedstat``), and
    when it waited for a CPU more than a fifth of the time in two 4 ms spans
    in a row (every core shared), the full team is back and held-up regions
    are ignored for 10 ms, doubled while it keeps happening up to 1.28 s.
    Results are bit-identical for every thread count, so this changes only
    the time.  On by default; the environment variable
    ``BLOCKSPARSE_ADAPTIVE_THREADS=0`` turns it off at import.

    Parameters
    ----------
    on : bool

    Raises
    ------
    TypeError
        If `on` is not a bool.
    """
    if not isinstance(on, bool):
        raise TypeError(f"on must be True or False, got {type(on).__name__}")
    _kernels.set_adaptive_threads(bool(on))


def adaptive_threads_state():
    """The busy-machine fallback now.

    Returns
    -------
    dict
        ``on``; ``single_thread_for_s``, how much longer kernels stay on one
        thread (0.0 when they use :func:`get_num_threads`);
        ``held_up_regions``, the parallel regions found held up since the
        process started; ``team_for_s``, how much longer held-up regions are
        ignored because the one thread found every core shared; and
        ``shared_core_ends``, how many one-thread windows ended that way.
    """
    on, left, count, team, ends = _kernels.adaptive_threads_state()
    return {"on": on, "single_thread_for_s": left, "held_up_regions": count,
            "team_for_s": team, "shared_core_ends": ends}


# (isa, threads) fixed for the kernels of one model call in this thread, or None
_PINNED = threading.local()


@contextlib.contextmanager
def _pinned_dispatch():
    """Within: kernels use the ISA variant and thread count current on entry.

    A model call runs some 10 kernels per layer; looking the settings up once
    per call instead of once per kernel saves their locks and checks (about
    2 us per kernel).  Nested uses keep the outermost pin; settings changed
    meanwhile apply from the next call.
    """
    if getattr(_PINNED, "value", None) is not None:
        yield
        return
    _PINNED.value = (_active_isa(), get_num_threads())
    try:
        yield
    finally:
        _PINNED.value = None


def _active_isa():
    """Index of the variant the next kernel call uses (raises if unusable)."""
    pinned = getattr(_PINNED, "value", None)
    if pinned is not None:
        return pinned[0]
    override = _ISA_OVERRIDE.get()
    if override:
        (forced, source), cap = override[-1], None
    else:
        with _LOCK:
            forced, source, cap = _State.forced, _State.forced_from, _State.cap
            errors = _State.isa_env_errors
        if errors:
            raise ValueError(next(iter(errors.values())))
    if forced is not None:
        if not _usable(forced):
            name = ISA_NAMES[forced]
            why = "was not built" if not _kernels.isa_built(forced) else \
                "is not supported by this CPU"
            raise RuntimeError(f"{source}={name!r}: the {name} variant {why}; "
                               f"available: {', '.join(available_isas())}")
        return forced
    best = _kernels.isa_best()
    if cap is not None:
        best = max((i for i in range(best + 1) if i <= cap and _usable(i)), default=0)
    return best


def get_isa():
    """Name of the ISA variant the kernels use now.

    Returns
    -------
    str
        One of ``"scalar"``, ``"avx2"``, ``"avx_vnni"``, ``"avx512_vnni"``.

    Raises
    ------
    ValueError
        If ``BLOCKSPARSE_ISA`` or ``BLOCKSPARSE_MAX_ISA`` names no variant.
    RuntimeError
        If a variant forced with ``BLOCKSPARSE_ISA`` or :func:`set_isa` is
        not available here.
    """
    return ISA_NAMES[_active_isa()]


def set_isa(name):
    """Force one ISA variant for all following kernel calls, in every thread.

    A process-wide setting (changed under a lock); :func:`isa_context`
    overrides it in the thread that enters the context.

    Parameters
    ----------
    name : str or None
        ``"scalar"``, ``"avx2"``, ``"avx_vnni"`` or ``"avx512_vnni"``;
        ``None`` returns to automatic selection.

    Raises
    ------
    ValueError
        If `name` is not a variant name.
    RuntimeError
        If the variant is not built or not supported by this CPU.
    """
    isa = None if name is None else _checked_isa(name)
    with _LOCK:
        _State.forced, _State.forced_from = isa, ("" if isa is None else "set_isa")
        _State.isa_env_errors = {k: v for k, v in _State.isa_env_errors.items()
                                 if k != "BLOCKSPARSE_ISA"}


def _checked_isa(name):
    isa = _parse_isa(name, "name")
    if not _usable(isa):
        raise RuntimeError(f"ISA variant {ISA_NAMES[isa]!r} is not available here; "
                           f"available: {', '.join(available_isas())}")
    return isa


def set_max_isa(name):
    """Cap the automatic ISA choice (like ``BLOCKSPARSE_MAX_ISA``).

    Parameters
    ----------
    name : str or None
        The best variant allowed; ``None`` removes the cap.  Process-wide,
        like :func:`set_isa`.
    """
    cap = None if name is None else _parse_isa(name, "name")
    with _LOCK:
        _State.cap = cap
        _State.isa_env_errors = {k: v for k, v in _State.isa_env_errors.items()
                                 if k != "BLOCKSPARSE_MAX_ISA"}


@contextlib.contextmanager
def isa_context(name):
    """Context manager that forces an ISA variant inside a ``with`` block.

    The override holds for the thread (or asyncio task) that enters the
    block, like :class:`numpy.errstate`: other threads keep their own
    setting, and threads started inside the block do not inherit it (run
    them with :func:`contextvars.copy_context` to pass it on).  Contexts
    nest and always restore what was in force before.

    Parameters
    ----------
    name : str
        Variant to use, see :func:`set_isa`.

    Raises
    ------
    ValueError
        If `name` is not a variant name.
    RuntimeError
        If the variant is not built or not supported by this CPU.

    Examples
    --------
    >>> import blocksparse
    >>> with blocksparse.isa_context("scalar"):
    ...     blocksparse.get_isa()
    'scalar'
    """
    entry = (_checked_isa(name), "isa_context")  # a new object: identifies this context
    _ISA_OVERRIDE.set(_ISA_OVERRIDE.get() + (entry,))
    try:
        yield
    finally:
        # remove this context's own entry (not "restore the previous value"), so that
        # contexts left out of order (generators) cannot leave another's ISA behind
        _ISA_OVERRIDE.set(tuple(e for e in _ISA_OVERRIDE.get() if e is not entry))


def _threads():
    """The thread count setting (without noting that a kernel will use it)."""
    if _State.fork_limited:
        return 1
    n = _State.num_threads
    if n is None:
        n = _kernels.default_threads()
    return min(max(1, n), MAX_THREADS)


def get_num_threads():
    """Number of threads the kernels use.

    Every kernel call takes its thread count from here.  In a process
    forked after this package ran a kernel on more than one thread, this
    is 1: GNU OpenMP cannot start threads there.

    Returns
    -------
    int
    """
    pinned = getattr(_PINNED, "value", None)
    if pinned is not None:
        return pinned[1]
    n = _threads()
    if n > 1:
        _State.teams_started = True  # from now on a forked child must stay on one thread
    return n


def set_num_threads(n):
    """Set the number of threads the kernels use, in every thread (process-wide).

    Parameters
    ----------
    n : int or None
        Thread count from 1 to ``MAX_THREADS`` = 4096; ``None``
        returns to the default (``BLOCKSPARSE_NUM_THREADS``, else OpenMP's
        default).

    Raises
    ------
    TypeError
        If `n` is not an integer.
    ValueError
        If `n` is below 1 or above 4096.

    Warns
    -----
    RuntimeWarning
        In a process forked after a multi-threaded kernel ran: kernels stay
        on one thread there (see :func:`get_num_threads`).
    """
    if n is not None:
        if isinstance(n, bool) or not hasattr(n, "__index__"):
            raise TypeError(f"n must be an integer, got {type(n).__name__}")
        n = operator.index(n)
        if n < 1:
            raise ValueError(f"n must be a positive number of threads, got {n}")
        if n > MAX_THREADS:
            raise ValueError(f"n must be a positive number of threads, at most {MAX_THREADS} "
                             f"(OpenMP aborts the process when it cannot start one), got {n}")
        if n > 1 and _State.fork_limited:
            warnings.warn(_FORK_NOTE, RuntimeWarning, stacklevel=2)
    with _LOCK:
        _State.num_threads = n
        if n is None:
            _read_threads_env()


_FORK_NOTE = ("this process was forked after blocksparse ran a multi-threaded kernel; "
              "OpenMP (libgomp) cannot start threads in it, so its kernels run on one thread")


def _read_threads_env():
    """Set the thread count from BLOCKSPARSE_NUM_THREADS, if given and valid (else warn)."""
    _State.env_problems.pop("BLOCKSPARSE_NUM_THREADS", None)
    env_threads = os.environ.get("BLOCKSPARSE_NUM_THREADS", "").strip()
    if not env_threads:
        return
    try:
        n = int(env_threads)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        msg = (f"BLOCKSPARSE_NUM_THREADS={env_threads!r} must be a number of threads from 1 "
               f"to {MAX_THREADS}; ignored (OpenMP's default is used)")
        _State.env_problems["BLOCKSPARSE_NUM_THREADS"] = msg
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return
    _State.num_threads = n


def environment_problems():
    """Environment variables this package rejected: {variable: message}."""
    return dict(_State.env_problems)


def _after_fork_in_child():
    global _LOCK
    _LOCK = threading.RLock()  # another thread may have held it at the fork
    if _State.teams_started:
        _State.fork_limited = True


def _log_kernel(name, isa, detail):
    if _State.verbose:
        print(f"blocksparse: {name} [{ISA_NAMES[isa]}] {detail}", file=sys.stderr)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def config():
    """The build and run-time configuration as a dict (see :func:`show_config`)."""
    try:
        active = get_isa()
    except (RuntimeError, ValueError) as exc:
        active = f"error: {exc}"
    return {
        "cpu": _cpu_model(),
        "isa_built": [n for i, n in enumerate(ISA_NAMES) if _kernels.isa_built(i)],
        "isa_detected": [n for i, n in enumerate(ISA_NAMES) if _kernels.isa_detected(i)],
        "isa_in_use": active,
        "isa_forced": None if _State.forced is None else ISA_NAMES[_State.forced],
        "isa_cap": None if _State.cap is None else ISA_NAMES[_State.cap],
        "num_threads": _threads(),
        "adaptive_threads": adaptive_threads_state(),
        "openmp": _kernels.have_openmp(),
    }


def show_config(file=None):
    """Print the ISAs built, detected and in use, and the thread count.

    Parameters
    ----------
    file : file-like, optional
        Where to print; standard output by default.
    """
    cfg = config()
    width = max(len(k) for k in cfg)
    for key, value in cfg.items():
        if isinstance(value, list):
            value = ", ".join(value) or "none"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        print(f"{key:<{width}} : {value}", file=file or sys.stdout)


_read_environment()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
