# cython: language_level=3
"""Typed glue between validated NumPy arrays and the C kernels.

Python (``_matrix.py``, ``_quant.py``) validates shapes, dtypes and index
ranges.  This module checks again only what memory safety needs (lengths,
contiguity, dtypes of the buffers it hands to C), releases the GIL around
the kernel call and turns the C status into an exception.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t

from blocksparse._kernels cimport *

cnp.import_array()

ISA_NAMES = tuple(bsk_isa_name(<bsk_isa>i).decode() for i in range(BSK_ISA_COUNT))
MAX_K_INT8 = BSK_MAX_K_INT8
OUT_KINDS = {"int32": BSK_OUT_I32, "float32": BSK_OUT_F32, "uint8": BSK_OUT_U8}
ACTIVATIONS = {None: BSK_ACT_NONE, "relu": BSK_ACT_RELU, "gelu": BSK_ACT_GELU}


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


cdef int _check_isa(int isa) except -1:
    if isa < 0 or isa >= BSK_ISA_COUNT:
        raise ValueError(f"isa must be an ISA index in [0, {BSK_ISA_COUNT}), got {isa}")
    return 0


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


cdef bint _bad_structure(const int32_t *indptr, int64_t nbr, const int32_t *indices,
                        int64_t nnzb, int64_t nbc) noexcept nogil:
    cdef int64_t i
    cdef int32_t lo = 0, hi = 0, v
    for i in range(nbr):
        if indptr[i + 1] < indptr[i]:
            return True
    for i in range(nnzb):
        v = indices[i]
        lo = v if v < lo else lo
        hi = v if v > hi else hi
    return lo < 0 or (nnzb > 0 and hi >= nbc)


cdef int _check_bcsr(bsk_bcsr *v, tuple shape, tuple blocksize,
                     cnp.ndarray indptr, cnp.ndarray indices,
                     cnp.ndarray data) except -1:
    cdef int64_t M = shape[0], K = shape[1], R = blocksize[0], C = blocksize[1]
    if R <= 0 or C <= 0 or M % R or K % C:
        raise ValueError("blocksize must divide the shape")
    for name, a in (("indptr", indptr), ("indices", indices)):
        if a.dtype != np.int32 or a.ndim != 1 or not a.flags.c_contiguous:
            raise TypeError(f"{name} must be a contiguous 1-D int32 array")
    if indptr.shape[0] != M // R + 1:
        raise ValueError("indptr has the wrong length")
    if data.ndim != 3 or not data.flags.c_contiguous:
        raise ValueError("data must be a C-contiguous (nnzb, R, C) array")
    if data.shape[0] != indices.shape[0] or data.shape[1] != R or data.shape[2] != C:
        raise ValueError("data and indices disagree on the block count")
    if indptr[0] != 0 or indptr[M // R] != indices.shape[0]:
        raise ValueError("indptr must run from 0 to nnzb")
    # The arrays are read-only, but a caller can flip the flag back and write
    # into them: a streaming check (about a microsecond per 10^4 blocks) keeps
    # bad indices from ever reaching the kernels as out-of-bounds reads.
    if _bad_structure(<const int32_t *>cnp.PyArray_DATA(indptr), M // R,
                      <const int32_t *>cnp.PyArray_DATA(indices), indices.shape[0], K // C):
        raise ValueError("indptr/indices were modified after construction: they are no longer "
                         "a valid block-CSR structure")
    v.M, v.K, v.R, v.C = M, K, R, C
    v.nnzb = indices.shape[0]
    v.indptr = <const int32_t *>cnp.PyArray_DATA(indptr)
    v.indices = <const int32_t *>cnp.PyArray_DATA(indices)
    v.data = <const void *>cnp.PyArray_DATA(data)
    return 0


cdef int _check_dense(cnp.ndarray a, str name, object dtype, int64_t rows,
                      int64_t cols, bint writable) except -1:
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != 2 or a.shape[0] != rows or a.shape[1] != cols:
        raise ValueError(f"{name} must have shape ({rows}, {cols}), got {(<object>a).shape}")
    if not a.flags.c_contiguous or not a.flags.aligned:
        raise ValueError(f"{name} must be C-contiguous and aligned")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} must be writable")
    return 0


def spmm_float(int isa, tuple shape, tuple blocksize, cnp.ndarray indptr not None,
               cnp.ndarray indices not None, cnp.ndarray data not None, cnp.ndarray X not None,
               cnp.ndarray Y not None, bint transposed, int num_threads):
    """Y = W @ X (transposed=False) or Y = X @ W.T (transposed=True), float."""
    cdef bsk_bcsr v
    cdef bsk_status st
    cdef int64_t M, K, N
    _check_isa(isa)
    _check_bcsr(&v, shape, blocksize, indptr, indices, data)
    M, K = v.M, v.K
    if data.dtype != np.float32 and data.dtype != np.float64:
        raise TypeError(f"data must be float32 or float64, got {data.dtype}")
    N = X.shape[1] if not transposed else X.shape[0]
    if transposed:
        _check_dense(X, "x", data.dtype, N, K, False)
        _check_dense(Y, "out", data.dtype, N, M, True)
    else:
        _check_dense(X, "X", data.dtype, K, N, False)
        _check_dense(Y, "out", data.dtype, M, N, True)
    cdef void *xp = cnp.PyArray_DATA(X)
    cdef void *yp = cnp.PyArray_DATA(Y)
    cdef int64_t ldx = X.shape[1], ldy = Y.shape[1]
    if data.dtype == np.float32:
        with nogil:
            st = bsk_spmm_f32(<bsk_isa>isa, &v, <const float *>xp, ldx, N,
                              <float *>yp, ldy, transposed, num_threads)
    else:
        with nogil:
            st = bsk_spmm_f64(<bsk_isa>isa, &v, <const double *>xp, ldx, N,
                              <double *>yp, ldy, transposed, num_threads)
    if st != BSK_OK:
        _raise(st, "bsk_spmm_" + ("f32" if data.dtype == np.float32 else "f64"), isa)
    return Y


cdef const void *_ptr_or_null(object a, str name, object dtype, int64_t n) except? NULL:
    if a is None:
        return NULL
    cdef cnp.ndarray arr = a
    if arr.dtype != dtype or arr.ndim != 1 or arr.shape[0] != n or not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be a contiguous 1-D {np.dtype(dtype)} array of length {n}")
    return cnp.PyArray_DATA(arr)


def qspmm(int isa, tuple shape, tuple blocksize, cnp.ndarray indptr not None,
          cnp.ndarray indices not None, cnp.ndarray data not None, object gptr, object gcols,
          object gw, cnp.ndarray X not None, bint x_transposed, cnp.ndarray Y not None,
          bint y_transposed, str kind, object activation, object rowsum,
          object w_scale, object x_scale, object x_zero, object bias,
          float out_scale, int out_zero, int num_threads):
    """INT8 product with fused epilogue; see bsk_qspmm in bsk.h."""
    cdef bsk_qbcsr q
    cdef bsk_epilogue e
    cdef bsk_status st
    cdef int64_t M, K, N, ngroups
    _check_isa(isa)
    if data.dtype != np.int8:
        raise TypeError(f"data must be int8, got {data.dtype}")
    _check_bcsr(&q.w, shape, blocksize, indptr, indices, data)
    M, K = q.w.M, q.w.K
    N = X.shape[0] if x_transposed else X.shape[1]
    if x_transposed:
        _check_dense(X, "x", np.uint8, N, K, False)
    else:
        _check_dense(X, "X", np.uint8, K, N, False)
    out_dtype = {"int32": np.int32, "float32": np.float32, "uint8": np.uint8}[kind]
    if y_transposed:
        _check_dense(Y, "out", out_dtype, N, M, True)
    else:
        _check_dense(Y, "out", out_dtype, M, N, True)
    q.gptr = q.gcols = q.gw = NULL
    if gptr is not None:
        if blocksize != (4, 1):
            raise ValueError("grouped weights are only for blocksize (4, 1)")
        q.gptr = <const int32_t *>_ptr_or_null(gptr, "gptr", np.int32, M // 4 + 1)
        ngroups = (<cnp.ndarray>gptr)[M // 4]
        q.gcols = <const int32_t *>_ptr_or_null(gcols, "gcols", np.int32, 4 * ngroups)
        q.gw = <const int32_t *>_ptr_or_null(gw, "gw", np.int32, 4 * ngroups)
    e.kind = OUT_KINDS[kind]
    e.act = ACTIVATIONS[activation]
    e.rowsum = <const int32_t *>_ptr_or_null(rowsum, "rowsum", np.int32, M)
    e.x_zero = <const int32_t *>_ptr_or_null(x_zero, "x_zero", np.int32, N)
    if e.x_zero == NULL:
        raise ValueError("x_zero is required")
    if kind != "int32":
        e.w_scale = <const float *>_ptr_or_null(w_scale, "w_scale", np.float32, M)
        e.x_scale = <const float *>_ptr_or_null(x_scale, "x_scale", np.float32, N)
        if e.w_scale == NULL or e.x_scale == NULL:
            raise ValueError("w_scale and x_scale are required for float outputs")
    else:
        e.w_scale = e.x_scale = NULL
    e.bias = <const float *>_ptr_or_null(bias, "bias", np.float32, M)
    e.out_scale = out_scale
    e.out_zero = out_zero
    cdef const uint8_t *xp = <const uint8_t *>cnp.PyArray_DATA(X)
    cdef void *yp = cnp.PyArray_DATA(Y)
    cdef int64_t ldx = X.shape[1], ldy = Y.shape[1]
    with nogil:
        st = bsk_qspmm(<bsk_isa>isa, &q, xp, ldx, N, x_transposed, yp, ldy,
                       y_transposed, &e, num_threads)
    if st != BSK_OK:
        _raise(st, bsk_qspmm_kernel_name(<bsk_isa>isa, &q).decode(), isa)
    return Y


def qspmm_kernel_name(int isa, tuple blocksize, bint grouped):
    cdef bsk_qbcsr q
    _check_isa(isa)
    q.w.R, q.w.C = blocksize
    q.gptr = <const int32_t *>1 if grouped else NULL
    return bsk_qspmm_kernel_name(<bsk_isa>isa, &q).decode()


QUANT_MODES = {"static": BSK_QUANT_STATIC, "tensor": BSK_QUANT_PER_TENSOR,
               "token": BSK_QUANT_PER_ROW}


def quantize_u8(int isa, cnp.ndarray X not None, str mode, cnp.ndarray scale not None, cnp.ndarray zero not None,
                cnp.ndarray Q not None, int num_threads):
    """Quantize float32 X (rows, cols) into uint8 Q; see bsk_quantize_u8."""
    cdef int64_t rows = X.shape[0], cols = X.shape[1]
    cdef bsk_status st
    _check_isa(isa)
    _check_dense(X, "x", np.float32, rows, cols, False)
    _check_dense(Q, "out", np.uint8, rows, cols, True)
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
    if st != BSK_OK:
        _raise(st, "bsk_quantize_u8", isa)
    return Q


include "_kernels_nn.pxi"
