"""Run-time configuration: which ISA variant runs the kernels, and threads.

Environment variables, read once at import:

``BLOCKSPARSE_ISA``
    Force one variant (``scalar``, ``avx2``, ``avx_vnni``, ``avx512_vnni``).
    A variant this build or CPU lacks is an error at the first kernel call.
``BLOCKSPARSE_MAX_ISA``
    Cap the variant: the best available one not above the cap is used.
``BLOCKSPARSE_NUM_THREADS``
    Threads for the kernels; otherwise OpenMP's default (``OMP_NUM_THREADS``
    or the number of cores).
``BLOCKSPARSE_VERBOSE``
    ``1`` logs every INT8 kernel call (kernel name, ISA, shape) to stderr.
"""
import contextlib
import operator
import os
import platform
import sys

from . import _kernels

ISA_NAMES = _kernels.ISA_NAMES  # ("scalar", "avx2", "avx_vnni", "avx512_vnni")
_ALIASES = {"ref": "scalar", "avxvnni": "avx_vnni", "avx512vnni": "avx512_vnni",
            "avx512": "avx512_vnni"}

__all__ = ["get_isa", "set_isa", "set_max_isa", "isa_context", "available_isas",
           "get_num_threads", "set_num_threads", "show_config"]


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
    forced = None      # index forced by set_isa / BLOCKSPARSE_ISA
    forced_from = ""   # where the forcing came from, for error messages
    cap = None         # index cap from set_max_isa / BLOCKSPARSE_MAX_ISA
    num_threads = None
    verbose = False


def _read_environment():
    env_isa = os.environ.get("BLOCKSPARSE_ISA", "").strip()
    if env_isa:
        _State.forced = _parse_isa(env_isa, "BLOCKSPARSE_ISA")
        _State.forced_from = "BLOCKSPARSE_ISA"
    env_cap = os.environ.get("BLOCKSPARSE_MAX_ISA", "").strip()
    if env_cap:
        _State.cap = _parse_isa(env_cap, "BLOCKSPARSE_MAX_ISA")
    _read_threads_env()
    _State.verbose = os.environ.get("BLOCKSPARSE_VERBOSE", "").strip() not in ("", "0")


def _active_isa():
    """Index of the variant the next kernel call uses (raises if unusable)."""
    if _State.forced is not None:
        if not _usable(_State.forced):
            name = ISA_NAMES[_State.forced]
            why = "was not built" if not _kernels.isa_built(_State.forced) else \
                "is not supported by this CPU"
            raise RuntimeError(f"{_State.forced_from}={name!r}: the {name} variant {why}; "
                               f"available: {', '.join(available_isas())}")
        return _State.forced
    best = _kernels.isa_best()
    if _State.cap is not None:
        best = max((i for i in range(best + 1) if i <= _State.cap and _usable(i)), default=0)
    return best


def get_isa():
    """Name of the ISA variant the kernels use now.

    Returns
    -------
    str
        One of ``"scalar"``, ``"avx2"``, ``"avx_vnni"``, ``"avx512_vnni"``.

    Raises
    ------
    RuntimeError
        If a variant forced with ``BLOCKSPARSE_ISA`` or :func:`set_isa` is
        not available here.
    """
    return ISA_NAMES[_active_isa()]


def set_isa(name):
    """Force one ISA variant for all following kernel calls.

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
    if name is None:
        _State.forced = None
        return
    isa = _parse_isa(name, "name")
    if not _usable(isa):
        raise RuntimeError(f"ISA variant {ISA_NAMES[isa]!r} is not available here; "
                           f"available: {', '.join(available_isas())}")
    _State.forced = isa
    _State.forced_from = "set_isa"


def set_max_isa(name):
    """Cap the automatic ISA choice (like ``BLOCKSPARSE_MAX_ISA``).

    Parameters
    ----------
    name : str or None
        The best variant allowed; ``None`` removes the cap.
    """
    _State.cap = None if name is None else _parse_isa(name, "name")


@contextlib.contextmanager
def isa_context(name):
    """Context manager that forces an ISA variant inside a ``with`` block.

    Parameters
    ----------
    name : str
        Variant to use, see :func:`set_isa`.

    Examples
    --------
    >>> import blocksparse
    >>> with blocksparse.isa_context("scalar"):
    ...     blocksparse.get_isa()
    'scalar'
    """
    saved = (_State.forced, _State.forced_from)
    set_isa(name)
    try:
        yield
    finally:
        _State.forced, _State.forced_from = saved


def get_num_threads():
    """Number of threads the kernels use.

    Returns
    -------
    int
    """
    if _State.num_threads is not None:
        return _State.num_threads
    return max(1, _kernels.default_threads())


def set_num_threads(n):
    """Set the number of threads the kernels use.

    Parameters
    ----------
    n : int or None
        Positive thread count; ``None`` returns to the default
        (``BLOCKSPARSE_NUM_THREADS``, else OpenMP's default).

    Raises
    ------
    ValueError
        If `n` is not a positive integer.
    """
    if n is None:
        _State.num_threads = None
        _read_threads_env()
        return
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"n must be an integer, got {type(n).__name__}")
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"n must be a positive number of threads, got {n}")
    _State.num_threads = n


def _read_threads_env():
    """Set the thread count from BLOCKSPARSE_NUM_THREADS, if given."""
    env_threads = os.environ.get("BLOCKSPARSE_NUM_THREADS", "").strip()
    if not env_threads:
        return
    try:
        n = int(env_threads)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"BLOCKSPARSE_NUM_THREADS={env_threads!r} must be a positive integer")
    _State.num_threads = n


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
    except RuntimeError as exc:
        active = f"error: {exc}"
    return {
        "cpu": _cpu_model(),
        "isa_built": [n for i, n in enumerate(ISA_NAMES) if _kernels.isa_built(i)],
        "isa_detected": [n for i, n in enumerate(ISA_NAMES) if _kernels.isa_detected(i)],
        "isa_in_use": active,
        "isa_forced": None if _State.forced is None else ISA_NAMES[_State.forced],
        "isa_cap": None if _State.cap is None else ISA_NAMES[_State.cap],
        "num_threads": get_num_threads(),
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
        print(f"{key:<{width}} : {value}", file=file or sys.stdout)


_read_environment()
