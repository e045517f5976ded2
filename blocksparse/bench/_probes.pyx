# cython: language_level=3
"""Typed glue to the ceiling probes (include/blocksparse/bsk_probe.h).

The measuring logic (which probes the CPU can run, repeats, threads) is in
:mod:`blocksparse.bench.ceiling`; this module only runs one probe with the
GIL released, so that several Python threads can run probes at once.
"""
from libc.stdint cimport int64_t, uintptr_t

cdef extern from "blocksparse/bsk_probe.h" nogil:
    int BSK_PROBE_COUNT
    int bsk_probe_built(int kind)
    int bsk_probe_run(int kind, int64_t reps, const void *buf, int64_t nbytes,
                      double *work, double *seconds, int64_t *sink)

# Probe names in the order of bsk_probe_kind.
KINDS = ("dpbusd_zmm", "dpbusd_ymm_evex", "dpbusd_ymm_vex", "fma_zmm", "fma_ymm",
         "fma_load_zmm", "fma_load_ymm", "read", "maddubs_ymm", "maddwd_ymm")


def _kind(str name):
    try:
        return KINDS.index(name)
    except ValueError:
        raise ValueError(f"probe must be one of {', '.join(KINDS)}, got {name!r}") from None


def built(str name):
    """True if probe `name` is compiled into this build."""
    return bool(bsk_probe_built(_kind(name)))


def run(str name, int64_t reps, buf=None):
    """Run probe `name` for `reps` loop repetitions; return ``(work, seconds)``.

    `buf` (a writable, C-contiguous buffer of at least 1 KiB, 64-byte aligned,
    its size a multiple of 64 bytes) is what the ``fma_load_*`` and ``read``
    probes load.  The caller checks that the CPU supports the probe's ISA.
    """
    cdef int kind = _kind(name)
    cdef const unsigned char[::1] view
    cdef const void *ptr = NULL
    cdef int64_t nbytes = 0
    cdef double work = 0.0, seconds = 0.0
    cdef int64_t sink = 0
    cdef int status
    if buf is not None:
        view = memoryview(buf).cast("B")
        nbytes = view.shape[0]
        if nbytes:
            ptr = &view[0]
    with nogil:
        status = bsk_probe_run(kind, reps, ptr, nbytes, &work, &seconds, &sink)
    if status == 1:
        raise ValueError(f"probe {name}: invalid argument (reps >= 1; buffer of >= 1 KiB, "
                         f"64-byte aligned, a multiple of 64 bytes)")
    if status == 3:
        raise NotImplementedError(f"probe {name} is not built into this package")
    if status != 0:
        raise RuntimeError(f"probe {name} failed with status {status}")
    return work, seconds
