# cython: language_level=3
"""Typed glue between validated NumPy arrays and the C kernels.

Python (``_matrix.py``, ``_quant.py``, ``_packed.py``, ``nn``) validates
arguments and names them in its errors.  This module checks again only what
memory safety needs, releases the GIL around the kernel call and turns the C
status into an exception.

A weight reaches the products as a :class:`KernelWeight` (the base of
``blocksparse._packed.PackedWeight``): its arrays and their block-CSR
structure are checked once, when it is made, and the C view of them is kept,
so a product checks only its operands (O(1)), not the structure (O(nnzb)).
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.math cimport fabsf, isfinite, isnan

from blocksparse._kernels cimport *

cnp.import_array()

ISA_NAMES = tuple(bsk_isa_name(<bsk_isa>i).decode() for i in range(BSK_ISA_COUNT))
MAX_K_INT8 = BSK_MAX_K_INT8
QGEMM_MR = BSK_QGEMM_MR  # rows per block of the dense INT8 weight panel
ACTIVATIONS = {None: BSK_ACT_NONE, "relu": BSK_ACT_RELU, "gelu": BSK_ACT_GELU}


def _feature_names():
    names = []
    while bsk_feature_name(len(names)) != NULL:
        names.append(bsk_feature_name(len(names)).decode())
    return tuple(names)


FEATURE_NAMES = _feature_names()  # the CPU features detection knows (src/cpu_features.h)


def isa_built(int isa):
    _check_isa(isa)
    return bool(bsk_isa_built(<bsk_isa>isa))


def isa_detected(int isa):
    _check_isa(isa)
    return bool(bsk_isa_detected(<bsk_isa>isa))


def isa_best():
    return int(bsk_isa_best())


def default_threads():
    return int(bsk_default_threads())


def have_openmp():
    return bool(bsk_have_openmp())


def set_min_work_per_thread(int64_t work):
    """Fewer threads for products with less work per thread (0: never); returns the old value."""
    return bsk_set_min_work_per_thread(work)


def set_adaptive_threads(bint on):
    """Turn the one-thread fallback of contended regions on or off (src/team.c)."""
    bsk_team_set_adaptive(on)


def adaptive_threads_state():
    """(on, seconds regions still run on one thread, held-up regions seen so far,
    seconds held-up regions are still ignored, one-thread windows ended on a shared core)."""
    cdef int on = 0
    cdef int64_t left = 0, count = 0, team = 0, ends = 0
    bsk_team_state(&on, &left, &count, &team, &ends)
    return bool(on), left * 1e-9, int(count), team * 1e-9, int(ends)


cdef int _check_isa(int isa) except -1:
    if isa < 0 or isa >= BSK_ISA_COUNT:
        raise ValueError(f"isa must be an ISA index in [0, {BSK_ISA_COUNT}), got {isa}")
    return 0


# ---- detection, for diagnostics and tests ----------------------------------------------

cdef list _names_of(uint64_t mask):
    return [n for i, n in enumerate(FEATURE_NAMES) if (mask >> i) & 1]


cdef uint64_t _mask_of(names) except? 0:
    cdef uint64_t mask = 0
    for n in names:
        if n not in FEATURE_NAMES:
            raise ValueError(f"unknown CPU feature {n!r}; known: {', '.join(FEATURE_NAMES)}")
        mask |= (<uint64_t>1) << FEATURE_NAMES.index(n)
    return mask


def isa_features(int isa):
    """The CPU features the variant's compiler flags enable (what detection checks)."""
    _check_isa(isa)
    return _names_of(bsk_isa_features(<bsk_isa>isa))


def isa_flags(int isa):
    """The compiler flags the variant was built with, or None if it was not built."""
    _check_isa(isa)
    cdef const char *flags = bsk_isa_flags(<bsk_isa>isa)
    return None if flags == NULL else flags.decode()


def cpu_features():
    """(features this CPU reports, XCR0) as detection read them."""
    cdef uint64_t xcr0 = 0
    cdef uint64_t mask = bsk_cpu_features(&xcr0)
    return _names_of(mask), int(xcr0)


def isa_mask_for(features, uint64_t xcr0):
    """ISA indices the detection routine accepts for these CPU features and XCR0."""
    cdef uint32_t mask = bsk_isa_mask_for(_mask_of(features), xcr0)
    return [i for i in range(BSK_ISA_COUNT) if (mask >> i) & 1]


# ---- status and argument checks -----------------------------------------------------------

cdef object _raise(bsk_status st, str kernel, int isa):
    where = f"{kernel} ({ISA_NAMES[isa]})"
    if st == BSK_EINVAL:
        raise ValueError(f"{where}: invalid argument")
    if st == BSK_ENOMEM:
        raise MemoryError(f"{where}: out of memory")
    if st == BSK_EUNSUPPORTED:
        raise NotImplementedError(f"{where}: not supported by this CPU or build")
    if st == BSK_EOVERFLOW:
        raise OverflowError(f"{where}: int32 accumulation range exceeded")
    raise RuntimeError(f"{where}: failed with status {int(st)}")


cdef inline bint _is(cnp.ndarray a, int typenum) noexcept:
    """a has this dtype in native byte order."""
    return cnp.PyArray_TYPE(a) == typenum and cnp.PyArray_ISNOTSWAPPED(a)


cdef int _check_dense(cnp.ndarray a, str name, int typenum, int64_t rows,
                      int64_t cols, bint writable) except -1:
    if not _is(a, typenum):
        raise TypeError(f"{name} must have dtype {cnp.PyArray_DescrFromType(typenum)}, "
                        f"got {a.dtype}")
    if cnp.PyArray_NDIM(a) != 2 or a.shape[0] != rows or a.shape[1] != cols:
        raise ValueError(f"{name} must have shape ({rows}, {cols}), got {(<object>a).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{name} must be C-contiguous and aligned")
    if writable and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{name} must be writable")
    return 0


cdef const void *_ptr_or_null(object a, str name, int typenum, int64_t n) except? NULL:
    """Data of a contiguous 1-D array of n elements, NULL for None."""
    if a is None:
        return NULL
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"{name} must be a NumPy array")
    cdef cnp.ndarray arr = a
    if not _is(arr, typenum) or cnp.PyArray_NDIM(arr) != 1 or arr.shape[0] != n or \
            not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISALIGNED(arr):
        raise ValueError(f"{name} must be a contiguous 1-D "
                         f"{cnp.PyArray_DescrFromType(typenum)} array of length {n}")
    return cnp.PyArray_DATA(arr)


cdef cnp.ndarray _frozen(object a, str name, int typenum, int64_t n):
    """a as a read-only contiguous 1-D array of n elements of this type."""
    if a is None:
        raise ValueError(f"{name} is required")
    _ptr_or_null(a, name, typenum, n)
    (<cnp.ndarray>a).flags.writeable = False
    return a


# ---- packed weights and the product --------------------------------------------------------

cdef enum:
    _F32 = 0
    _F64 = 1
    _I8 = 2


cdef class KernelWeight:
    """A block-CSR weight as the C kernels read it, checked once.

    The base of ``blocksparse._packed.PackedWeight`` (see there): this
    class validates the arrays once (lengths, dtypes, the whole index
    structure: O(nnzb)), makes them read-only and keeps their C view, so
    that a product checks only its operands.  The caller hands over arrays
    that nothing else writes to.

    Parameters
    ----------
    shape, blocksize : tuple of int
        (M, K) and (R, C).
    indptr, indices : ndarray of int32
        Block-CSR structure.
    data : ndarray of shape (nnzb, R, C)
        float32, float64 or int8 values.
    groups : tuple of 3 ndarrays, optional
        int8 with blocksize (4, 1): (gptr, gcols, gw), see ``_pack.group_strips``.
    rowsum : ndarray of shape (M,), dtype int32
        int8 only: the row sums of the values (zero-point correction).
    scale : ndarray of shape (M,), dtype float32, optional
        int8 only: per-row scales, for float32 and uint8 outputs.
    panel : ndarray of int32, optional
        int8 only: the same weight packed for the dense kernel
        (``bsk_qdense``: ``ceil(M / QGEMM_MR) * ceil(K / 4) * QGEMM_MR``
        32-bit groups); products then run ``bsk_qgemm``.
    """

    cdef bsk_qbcsr q
    cdef bsk_qdense d
    cdef int kind
    cdef readonly tuple shape
    cdef readonly tuple blocksize
    cdef readonly cnp.ndarray indptr
    cdef readonly cnp.ndarray indices
    cdef readonly cnp.ndarray data
    cdef readonly object groups
    cdef readonly object rowsum
    cdef readonly object scale
    cdef readonly object panel

    def __init__(self, shape, blocksize, indptr, indices, data, groups=None, rowsum=None,
                 scale=None, panel=None):
        cdef int64_t M = shape[0], K = shape[1], R = blocksize[0], C = blocksize[1]
        cdef int64_t i, nbr, nbc, nnzb, ngroups
        cdef const int32_t *p
        if M < 0 or K < 0 or R < 1 or C < 1 or M % R or K % C:
            raise ValueError(f"blocksize {(R, C)} must divide the shape {(M, K)}")
        nbr, nbc = M // R, K // C
        if not isinstance(data, cnp.ndarray):
            raise TypeError("data must be a NumPy array")
        if _is(data, cnp.NPY_FLOAT32):
            self.kind = _F32
        elif _is(data, cnp.NPY_FLOAT64):
            self.kind = _F64
        elif _is(data, cnp.NPY_INT8):
            self.kind = _I8
        else:
            raise TypeError(f"data must be float32, float64 or int8, got {data.dtype}")
        nnzb = data.shape[0] if data.ndim else -1
        if data.ndim != 3 or data.shape[1] != R or data.shape[2] != C or \
                not data.flags.c_contiguous or not data.flags.aligned:
            raise ValueError(f"data must be a C-contiguous (nnzb, {R}, {C}) array")
        self.indptr = _frozen(indptr, "indptr", cnp.NPY_INT32, nbr + 1)
        self.indices = _frozen(indices, "indices", cnp.NPY_INT32, nnzb)
        data.flags.writeable = False
        self.data = data
        p = <const int32_t *>cnp.PyArray_DATA(self.indptr)
        if p[0] != 0 or p[nbr] != nnzb:
            raise ValueError(f"indptr must run from 0 to nnzb = {nnzb}")
        for i in range(nbr):
            if p[i + 1] < p[i]:
                raise ValueError("indptr must be non-decreasing")
        if _out_of_range(<const int32_t *>cnp.PyArray_DATA(self.indices), nnzb, nbc):
            raise ValueError(f"indices must lie in [0, K/C) = [0, {nbc})")
        self.q.w.M, self.q.w.K, self.q.w.R, self.q.w.C, self.q.w.nnzb = M, K, R, C, nnzb
        self.q.w.indptr = p
        self.q.w.indices = <const int32_t *>cnp.PyArray_DATA(self.indices)
        self.q.w.data = cnp.PyArray_DATA(data)
        self.q.gptr = self.q.gcols = self.q.gw = NULL
        if self.kind != _I8:
            if groups is not None or rowsum is not None or scale is not None or \
                    panel is not None:
                raise ValueError("groups, rowsum, scale and panel are for int8 weights")
        else:
            self.rowsum = _frozen(rowsum, "rowsum", cnp.NPY_INT32, M)
            if scale is not None:
                self.scale = _frozen(scale, "scale", cnp.NPY_FLOAT32, M)
            if groups is not None:
                if (R, C) != (4, 1):
                    raise ValueError("grouped weights are only for blocksize (4, 1)")
                gptr = _frozen(groups[0], "gptr", cnp.NPY_INT32, nbr + 1)
                p = <const int32_t *>cnp.PyArray_DATA(gptr)
                for i in range(nbr):
                    if p[i + 1] < p[i]:
                        raise ValueError("gptr must be non-decreasing")
                ngroups = p[nbr] if nbr else 0
                if nbr and p[0] != 0:
                    raise ValueError("gptr must start at 0")
                gcols = _frozen(groups[1], "gcols", cnp.NPY_INT32, 4 * ngroups)
                gw = _frozen(groups[2], "gw", cnp.NPY_INT32, 4 * ngroups)
                if _out_of_range(<const int32_t *>cnp.PyArray_DATA(gcols), 4 * ngroups, K):
                    raise ValueError(f"gcols must lie in [0, K) = [0, {K})")
                self.groups = (gptr, gcols, gw)
                self.q.gptr = p
                self.q.gcols = <const int32_t *>cnp.PyArray_DATA(gcols)
                self.q.gw = <const int32_t *>cnp.PyArray_DATA(gw)
            if panel is not None:
                self.panel = _frozen(panel, "panel", cnp.NPY_INT32,
                                     (M + BSK_QGEMM_MR - 1) // BSK_QGEMM_MR * BSK_QGEMM_MR
                                     * ((K + 3) // 4))
                self.d.M, self.d.K = M, K
                self.d.panel = <const int32_t *>cnp.PyArray_DATA(self.panel)
        self.shape = (M, K)
        self.blocksize = (R, C)

    @property
    def dtype(self):
        """Value dtype: float32, float64 or int8."""
        return self.data.dtype

    @property
    def nnzb(self):
        """Stored blocks."""
        return int(self.q.w.nnzb)

    def kernel_name(self, int isa):
        """Name of the C kernel a product with this weight runs on variant `isa`."""
        _check_isa(isa)
        if self.panel is not None:
            return bsk_qgemm_kernel_name(<bsk_isa>isa).decode()
        if self.kind == _I8:
            return bsk_qspmm_kernel_name(<bsk_isa>isa, &self.q).decode()
        return "bsk_spmm_f32" if self.kind == _F32 else "bsk_spmm_f64"


cdef bint _out_of_range(const int32_t *v, int64_t n, int64_t end) noexcept nogil:
    cdef int64_t i
    cdef int32_t lo = 0, hi = 0
    for i in range(n):
        lo = v[i] if v[i] < lo else lo
        hi = v[i] if v[i] > hi else hi
    return lo < 0 or (n > 0 and hi >= end)


cdef class Epilogue:
    """What an INT8 product does with its int32 accumulators (``bsk_epilogue``).

    The base of ``blocksparse._packed.Epilogue`` (see there).  The output
    kind follows the output array's dtype; these are the rest: activation
    (None, "relu" or "gelu"), bias (float32 (M,) or None), for uint8
    outputs the requantization scale and zero point, and a float part added
    before the bias: float_x (float32 (K, N)) times dense columns
    (float_columns, int32 (nc,), with values float_dense, float32 (M, nc))
    and sparse entries (float_weight, a float32 KernelWeight of blocksize
    (1, 1)).
    """

    cdef int act
    cdef readonly object activation
    cdef readonly object bias
    cdef readonly float out_scale
    cdef readonly int out_zero
    cdef readonly object float_x
    cdef readonly object float_columns
    cdef readonly object float_dense
    cdef readonly KernelWeight float_weight

    def __init__(self, activation=None, bias=None, out_scale=1.0, out_zero=0, *,
                 float_x=None, float_columns=None, float_dense=None, float_weight=None):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of None, 'relu', 'gelu', got {activation!r}")
        if bias is not None:
            _ptr_or_null(bias, "bias", cnp.NPY_FLOAT32, len(bias))
        if (float_columns is None) != (float_dense is None):
            raise ValueError("float_columns and float_dense go together")
        if (float_x is None) != (float_columns is None and float_weight is None):
            raise ValueError("float_x goes with float_columns/float_dense or float_weight")
        cdef int64_t K = -1
        if float_x is not None:
            if not isinstance(float_x, cnp.ndarray):
                raise TypeError(f"float_x must be a NumPy array, got {type(float_x).__name__}")
            K = float_x.shape[0] if float_x.ndim == 2 else -1
            _check_dense(float_x, "float_x", cnp.NPY_FLOAT32, K, float_x.shape[1], False)
            if float_columns is not None:
                _ptr_or_null(float_columns, "float_columns", cnp.NPY_INT32,
                             len(float_columns))
                if _out_of_range(<const int32_t *>cnp.PyArray_DATA(float_columns),
                                 len(float_columns), K):
                    raise ValueError(f"float_columns must lie in [0, {K})")
                if not isinstance(float_dense, cnp.ndarray):
                    raise TypeError(f"float_dense must be a NumPy array, got "
                                    f"{type(float_dense).__name__}")
                _check_dense(float_dense, "float_dense", cnp.NPY_FLOAT32,
                             float_dense.shape[0] if float_dense.ndim == 2 else -1,
                             len(float_columns), False)
        if float_weight is not None:
            if not isinstance(float_weight, KernelWeight):
                raise TypeError(f"float_weight must be a packed weight, got "
                                f"{type(float_weight).__name__}")
            if (<KernelWeight>float_weight).kind != _F32 or \
                    float_weight.blocksize != (1, 1):
                raise ValueError(f"float_weight must hold float32 values in (1, 1) blocks, "
                                 f"got {float_weight.dtype} in {float_weight.blocksize}")
            if float_weight.shape[1] != K:
                raise ValueError(f"float_weight must have {K} columns (the rows of float_x), "
                                 f"got {float_weight.shape[1]}")
        cdef float scale32 = out_scale
        if not (scale32 > 0 and isfinite(scale32)):
            raise ValueError(f"out_scale must be finite and positive in float32, got {out_scale!r}")
        if not 0 <= out_zero <= 255:
            raise ValueError(f"out_zero must lie in [0, 255], got {out_zero!r}")
        self.act = ACTIVATIONS[activation]
        self.activation = activation
        self.bias = bias
        self.float_x = float_x
        self.float_columns = float_columns
        self.float_dense = float_dense
        self.float_weight = float_weight
        self.out_scale = out_scale
        self.out_zero = out_zero


cdef Epilogue _NO_EPILOGUE = Epilogue()


def matmul(int isa, KernelWeight w not None, x, cnp.ndarray out not None, bint tokens,
           Epilogue epilogue, int num_threads):
    """out = w @ x, written in place; see ``blocksparse._packed.matmul``.

    tokens=False: x is (K, N), out (M, N); tokens=True: x is (N, K), out
    (N, M).  Float weights take a float array of their dtype; int8 weights
    quantized activations (attributes q, scale, zero) and an epilogue.
    """
    cdef int64_t M = w.q.w.M, K = w.q.w.K, N
    cdef bsk_status st
    cdef cnp.ndarray q
    _check_isa(isa)
    if w.kind != _I8:
        if epilogue is not None:
            raise ValueError("an epilogue is for int8 weights")
        return _spmm(isa, w, x, out, tokens, num_threads)
    try:
        q = x.q
    except AttributeError:
        raise TypeError("an int8 weight multiplies QuantizedActivations (q, scale, zero), "
                        f"got {type(x).__name__}") from None
    N = (q.shape[0] if tokens else q.shape[1]) if cnp.PyArray_NDIM(q) == 2 else -1
    if tokens:
        _check_dense(q, "x", cnp.NPY_UINT8, N, K, False)
    else:
        _check_dense(q, "X", cnp.NPY_UINT8, K, N, False)
    cdef bsk_epilogue e
    _epilogue_for(&e, w, out, N, tokens, epilogue, x.scale, x.zero)
    _float_term(&e, epilogue, w, N, tokens, out)
    cdef const uint8_t *xp = <const uint8_t *>cnp.PyArray_DATA(q)
    cdef void *yp = cnp.PyArray_DATA(out)
    cdef int64_t ldx = q.shape[1], ldy = out.shape[1]
    if w.panel is not None:
        with nogil:
            st = bsk_qgemm(<bsk_isa>isa, &w.d, xp, ldx, N, tokens, yp, ldy, tokens, &e,
                           num_threads)
    else:
        with nogil:
            st = bsk_qspmm(<bsk_isa>isa, &w.q, xp, ldx, N, tokens, yp, ldy, tokens, &e,
                           num_threads)
    if st != BSK_OK:
        _raise(st, w.kernel_name(isa), isa)
    return out


cdef int _epilogue_for(bsk_epilogue *e, KernelWeight w, cnp.ndarray out, int64_t N,
                       bint tokens, Epilogue epilogue, object x_scale,
                       object x_zero) except -1:
    """Check out (int32, float32 or uint8, (M, N) or (N, M) by tokens) and set e
    from the epilogue (None: none) and the activations' scales and zero points
    (arrays of N or None), with no float term (_float_term sets it)."""
    cdef int64_t M = w.q.w.M
    cdef int typenum = cnp.PyArray_TYPE(out)
    if typenum == cnp.NPY_INT32:
        e.kind = BSK_OUT_I32
    elif typenum == cnp.NPY_FLOAT32:
        e.kind = BSK_OUT_F32
    elif typenum == cnp.NPY_UINT8:
        e.kind = BSK_OUT_U8
    else:
        raise TypeError(f"out must be int32, float32 or uint8, got {out.dtype}")
    if tokens:
        _check_dense(out, "out", typenum, N, M, True)
    else:
        _check_dense(out, "out", typenum, M, N, True)
    if epilogue is None:
        epilogue = _NO_EPILOGUE
    e.x_zero = <const int32_t *>_ptr_or_null(x_zero, "x.zero", cnp.NPY_INT32, N)
    e.rowsum = <const int32_t *>cnp.PyArray_DATA(w.rowsum) if e.x_zero != NULL else NULL
    e.x_scale = e.w_scale = NULL
    if e.kind != BSK_OUT_I32:
        e.x_scale = <const float *>_ptr_or_null(x_scale, "x.scale", cnp.NPY_FLOAT32, N)
        if e.x_scale == NULL or w.scale is None:
            raise ValueError("float32 and uint8 outputs need the weight's and x's scales")
        e.w_scale = <const float *>cnp.PyArray_DATA(w.scale)
    elif epilogue.act != BSK_ACT_NONE or epilogue.bias is not None:
        raise ValueError("an int32 output takes no activation or bias")
    e.act = epilogue.act
    e.bias = <const float *>_ptr_or_null(epilogue.bias, "bias", cnp.NPY_FLOAT32, M)
    e.out_scale = epilogue.out_scale
    e.out_zero = epilogue.out_zero
    e.f_x = e.f_dense = e.f_data = NULL
    e.f_cols = e.f_indptr = e.f_indices = NULL
    e.ld_fx = e.f_ncols = 0
    return 0


def linear_f32(int isa, KernelWeight w not None, cnp.ndarray x not None,
               cnp.ndarray x_scale not None, cnp.ndarray x_zero not None,
               cnp.ndarray out not None, Epilogue epilogue, int num_threads):
    """out = quantize(x) @ w.T with the epilogue, x (N, K) float32 quantized
    per token (parameters into x_scale, x_zero, N of each); see bsk_qlinear_f32."""
    cdef int64_t K = w.q.w.K
    cdef int64_t N = x.shape[0] if cnp.PyArray_NDIM(x) == 2 else -1
    cdef bsk_status st
    _check_isa(isa)
    if w.kind != _I8:
        raise TypeError(f"linear_f32 is for int8 weights, got {w.dtype}")
    _check_dense(x, "x", cnp.NPY_FLOAT32, N, K, False)
    cdef float *sp = <float *>_ptr_or_null(x_scale, "x_scale", cnp.NPY_FLOAT32, N)
    cdef int32_t *zp = <int32_t *>_ptr_or_null(x_zero, "x_zero", cnp.NPY_INT32, N)
    if not (cnp.PyArray_ISWRITEABLE(x_scale) and cnp.PyArray_ISWRITEABLE(x_zero)):
        raise ValueError("x_scale and x_zero must be writable")
    cdef bsk_epilogue e
    _epilogue_for(&e, w, out, N, True, epilogue, x_scale, x_zero)
    cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
    cdef void *yp = cnp.PyArray_DATA(out)
    cdef int64_t ldy = out.shape[1]
    cdef const bsk_qbcsr *W = NULL if w.panel is not None else &w.q
    cdef const bsk_qdense *D = &w.d if w.panel is not None else NULL
    with nogil:
        st = bsk_qlinear_f32(<bsk_isa>isa, W, D, xp, K, N, sp, zp, yp, ldy, &e, num_threads)
    if st == BSK_ENONFINITE:
        raise ValueError("x has NaN or Inf values (or values beyond float32), which uint8 "
                         "quantization cannot represent")
    if st != BSK_OK:
        _raise(st, w.kernel_name(isa), isa)
    return out


cdef double _max_of(const float *p, int64_t n, bint magnitude) noexcept nogil:
    """max(p[:n]) (of |p| with magnitude), 0 for n == 0; NaN if any is NaN (as np.max)."""
    cdef double m = 0, v
    cdef int64_t i
    for i in range(n):
        v = fabsf(p[i]) if magnitude else p[i]
        if isnan(v):
            return v
        if v > m or i == 0:
            m = v
    return m


def scale_maxima(KernelWeight w not None, x_scale, bias):
    """(max of w's scales, max of x_scale, max |bias|) as floats, 0 for None or
    empty: what the float32 overflow bound needs (_quant._check_epilogue),
    without three NumPy reductions per call."""
    cdef cnp.ndarray xs = np.ascontiguousarray(x_scale, dtype=np.float32).reshape(-1)
    cdef cnp.ndarray bs = None if bias is None else \
        np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
    cdef cnp.ndarray ws = w.scale
    return (_max_of(<const float *>cnp.PyArray_DATA(ws), ws.shape[0], False) if ws is not None
            else 0.0,
            _max_of(<const float *>cnp.PyArray_DATA(xs), xs.shape[0], False),
            _max_of(<const float *>cnp.PyArray_DATA(bs), bs.shape[0], True) if bs is not None
            else 0.0)

cdef int _float_term(bsk_epilogue *e, Epilogue epilogue, KernelWeight w, int64_t N,
                     bint tokens, cnp.ndarray out) except -1:
    """Set the epilogue's float term (bsk.h) from the Epilogue's float part, checked
    (_epilogue_for left e without one)."""
    if epilogue is None or epilogue.float_x is None:
        return 0
    if tokens:
        raise ValueError("an epilogue's float part needs the 'features' layout")
    if e.kind == BSK_OUT_I32:
        raise ValueError("an int32 output takes no float part")
    cdef int64_t M = w.q.w.M
    cdef cnp.ndarray fx = epilogue.float_x
    _check_dense(fx, "float_x", cnp.NPY_FLOAT32, w.q.w.K, N, False)
    cdef char *a0 = <char *>cnp.PyArray_DATA(fx)
    cdef char *b0 = <char *>cnp.PyArray_DATA(out)
    if a0 < b0 + cnp.PyArray_NBYTES(out) and b0 < a0 + cnp.PyArray_NBYTES(fx):
        raise ValueError("out must not overlap float_x")
    cdef cnp.ndarray dense
    if epilogue.float_columns is not None:
        dense = epilogue.float_dense
        if dense.shape[0] != M:
            raise ValueError(f"float_dense must have the weight's {M} rows, got "
                             f"{dense.shape[0]}")
        e.f_ncols = len(epilogue.float_columns)
        e.f_cols = <const int32_t *>cnp.PyArray_DATA(epilogue.float_columns)
        e.f_dense = <const float *>cnp.PyArray_DATA(dense)
    cdef KernelWeight f = epilogue.float_weight
    if f is not None:
        if f.shape != w.shape:
            raise ValueError(f"float_weight must have the weight's shape {w.shape}, got "
                             f"{f.shape}")
        e.f_indptr = f.q.w.indptr
        e.f_indices = f.q.w.indices
        e.f_data = <const float *>f.q.w.data
    e.f_x = <const float *>a0
    e.ld_fx = fx.shape[1]
    return 0


cdef object _spmm(int isa, KernelWeight w, cnp.ndarray X, cnp.ndarray Y, bint tokens,
                  int num_threads):
    cdef int64_t M = w.q.w.M, K = w.q.w.K, N
    cdef int typenum = cnp.NPY_FLOAT32 if w.kind == _F32 else cnp.NPY_FLOAT64
    cdef bsk_status st
    N = (X.shape[0] if tokens else X.shape[1]) if cnp.PyArray_NDIM(X) == 2 else -1
    if tokens:
        _check_dense(X, "x", typenum, N, K, False)
        _check_dense(Y, "out", typenum, N, M, True)
    else:
        _check_dense(X, "X", typenum, K, N, False)
        _check_dense(Y, "out", typenum, M, N, True)
    cdef void *xp = cnp.PyArray_DATA(X)
    cdef void *yp = cnp.PyArray_DATA(Y)
    cdef int64_t ldx = X.shape[1], ldy = Y.shape[1]
    if w.kind == _F32:
        with nogil:
            st = bsk_spmm_f32(<bsk_isa>isa, &w.q.w, <const float *>xp, ldx, N,
                              <float *>yp, ldy, tokens, num_threads)
    else:
        with nogil:
            st = bsk_spmm_f64(<bsk_isa>isa, &w.q.w, <const double *>xp, ldx, N,
                              <double *>yp, ldy, tokens, num_threads)
    if st != BSK_OK:
        _raise(st, "bsk_spmm_" + ("f32" if w.kind == _F32 else "f64"), isa)
    return Y


def qspmm_kernel_name(int isa, tuple blocksize, bint grouped):
    """Name of the INT8 kernel for this block shape (grouped: (4, 1) group tables)."""
    cdef bsk_qbcsr q
    _check_isa(isa)
    q.w.R, q.w.C = blocksize
    q.gptr = <const int32_t *>1 if grouped else NULL
    return bsk_qspmm_kernel_name(<bsk_isa>isa, &q).decode()


# ---- activation quantization ------------------------------------------------------------------

QUANT_MODES = {"static": BSK_QUANT_STATIC, "tensor": BSK_QUANT_PER_TENSOR,
               "token": BSK_QUANT_PER_ROW}


def quantize_u8(int isa, cnp.ndarray X not None, str mode, cnp.ndarray scale not None, cnp.ndarray zero not None,
                cnp.ndarray Q not None, int num_threads):
    """Quantize float32 X (rows, cols) into uint8 Q; see bsk_quantize_u8."""
    cdef int64_t rows = X.shape[0], cols = X.shape[1]
    cdef bsk_status st
    _check_isa(isa)
    _check_dense(X, "x", cnp.NPY_FLOAT32, rows, cols, False)
    _check_dense(Q, "out", cnp.NPY_UINT8, rows, cols, True)
    cdef int64_t n = rows if mode == "token" else 1
    if scale.dtype != np.float32 or scale.ndim != 1 or scale.shape[0] < n or \
            not scale.flags.c_contiguous or not scale.flags.writeable:
        raise ValueError(f"scale must be a writable float32 array of length {n}")
    if zero.dtype != np.int32 or zero.ndim != 1 or zero.shape[0] < n or \
            not zero.flags.c_contiguous or not zero.flags.writeable:
        raise ValueError(f"zero must be a writable int32 array of length {n}")
    cdef int m = QUANT_MODES[mode]
    cdef const float *xp = <const float *>cnp.PyArray_DATA(X)
    cdef float *sp = <float *>cnp.PyArray_DATA(scale)
    cdef int32_t *zp = <int32_t *>cnp.PyArray_DATA(zero)
    cdef uint8_t *qp = <uint8_t *>cnp.PyArray_DATA(Q)
    with nogil:
        st = bsk_quantize_u8(<bsk_isa>isa, xp, rows, cols, cols, m, sp, zp, qp, cols, num_threads)
    if st == BSK_ENONFINITE:
        raise ValueError("x has NaN or Inf values (or values beyond float32), which uint8 "
                         "quantization cannot represent")
    if st != BSK_OK:
        _raise(st, "bsk_quantize_u8", isa)
    return Q


include "_kernels_nn.pxi"
