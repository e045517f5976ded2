"""Pure-NumPy twins of the kernels, and the comparison helpers built on them.

Integer products are computed in int64 (scipy's int8 product wraps around,
so it is never the reference for values); float products in float64; the
quantization formulas in float32 as documented in blocksparse/_quant.py and
src/simd/vec16.h (bsk_u8_params16, bsk_u8_code16); GELU with :func:`math.erf`.
"""
import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


# ---- products -----------------------------------------------------------------

def int_matmul(A, B):
    """Exact integer product in int64."""
    return np.asarray(A).astype(np.int64) @ np.asarray(B).astype(np.int64)


def int_matmul_i32(A, B):
    """Exact product as int32, asserting that it fits (what the kernels promise)."""
    ref = int_matmul(A, B)
    assert ref.size == 0 or (ref.min() >= -2**31 and ref.max() < 2**31)
    return ref.astype(np.int32)


def float_matmul(A, B):
    """float64 product of the operands' exact values, and |A| @ |B| for error bounds."""
    A64 = np.asarray(A, dtype=np.float64)
    B64 = np.asarray(B, dtype=np.float64)
    return A64 @ B64, np.abs(A64) @ np.abs(B64)


def assert_float_product(actual, ref, absref, K, dtype, what=""):
    """Check a float product against its float64 reference.

    Tolerance from the dtype (sklearn's defaults: rtol 1e-4 for float32,
    1e-7 for float64) plus an absolute term from the rounding-error bound
    of a K-term dot product, ``K * eps * (|A| @ |B|)``, which covers
    cancellation where the result is near zero.
    """
    dtype = np.dtype(dtype)
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape}, expected {ref.shape}"
    if actual.size == 0:
        return
    eps = EPS32 if dtype == np.float32 else EPS64
    rtol = 1e-4 if dtype == np.float32 else 1e-7
    atol = (max(K, 1) + 2) * eps * absref + np.finfo(dtype).tiny
    err = np.abs(actual.astype(np.float64) - ref)
    bad = ~(err <= atol + rtol * np.abs(ref))
    if np.any(bad):
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} elements off; first at "
                             f"{i}: got {actual[i]!r}, expected {ref[i]!r} "
                             f"(|A|@|B| = {absref[i]!r})")


def assert_not_vacuous(actual, ref, atol=0.0):
    """A product whose reference is not all zero must not come back all zero.

    Reference entries within `atol` of zero (scalar or per element) may
    legitimately round to 0 and are not counted.
    """
    if np.any(np.abs(ref) > atol):
        assert np.any(actual != 0), "output is all zeros but the reference is not"


def result_dtype(w_dtype, x_dtype):
    """NumPy's dtype for a product of arrays of these dtypes."""
    return (np.zeros((1, 1), w_dtype) @ np.zeros((1, 1), x_dtype)).dtype


# ---- quantization ----------------------------------------------------------------

def quantize_weights(W):
    """Per-row symmetric INT8: ``s = max|W[m]|/127`` (1 for a zero row), float32.

    ``Wq = clip(rint(W / s), -127, 127)``, divided in float64 by the float32
    scale, as blocksparse.quantize documents.
    """
    W64 = np.asarray(W, dtype=np.float64)
    amax = np.abs(W64).max(axis=1) if W64.shape[1] else np.zeros(W64.shape[0])
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(W64 / scale.astype(np.float64)[:, None]), -127, 127).astype(np.int8)
    return q, scale


def activation_params(x32, per_token=True):
    """Dynamic (scale, zero_point) in float32, as src/simd/vec16.h computes them."""
    axis = 1 if per_token else None
    if x32.size:
        lo = np.minimum(x32.min(axis=axis), np.float32(0))
        hi = np.maximum(x32.max(axis=axis), np.float32(0))
    else:
        n = x32.shape[0] if per_token else None
        lo = np.zeros(n, np.float32) if n is not None else np.float32(0)
        hi = lo
    lo = np.asarray(lo, dtype=np.float32)
    hi = np.asarray(hi, dtype=np.float32)
    s = ((hi - lo) / np.float32(255)).astype(np.float32)
    s = np.where(s > 0, s, np.float32(1)).astype(np.float32)
    z = np.clip(np.rint((-lo) / s), 0, 255).astype(np.int32)
    return s, z


def quantize_activations(x, scale=None, zero_point=None, per_token=True):
    """``xq = clip(rint(x / s) + z, 0, 255)`` in float32 arithmetic."""
    x32 = np.asarray(x, dtype=np.float32)
    if scale is None:
        s, z = activation_params(x32, per_token)
    else:
        s, z = np.float32(scale), np.int32(zero_point)
    s_b = s[:, None] if np.ndim(s) else s
    z_b = z[:, None] if np.ndim(z) else z
    q = np.rint(x32 / s_b).astype(np.float32) + np.asarray(z_b).astype(np.float32)
    q = np.clip(q, 0, 255).astype(np.uint8)
    return q, np.asarray(s, np.float32), np.asarray(z, np.int32)


def calibrate(samples):
    """Per-tensor min/max calibration in float32 (blocksparse.calibrate)."""
    arrays = [np.asarray(a, dtype=np.float64) for a in samples]
    lo = min(0.0, *(a.min() for a in arrays if a.size))
    hi = max(0.0, *(a.max() for a in arrays if a.size))
    lo32, hi32 = np.float32(lo), np.float32(hi)
    s = np.float32((hi32 - lo32) / np.float32(255))
    if not s > 0:
        s = np.float32(1)
    return float(s), int(np.clip(np.rint(-lo32 / s), 0, 255))


def requantize(y32, out_scale, out_zero):
    """uint8 output of the epilogue from its float32 value, in float32."""
    q = np.rint(np.asarray(y32, np.float32) / np.float32(out_scale)).astype(np.float32)
    return np.clip(q + np.float32(out_zero), 0, 255).astype(np.uint8)


def gelu(y):
    """Exact erf GELU in float64."""
    erf = np.vectorize(math.erf, otypes=[np.float64])
    y = np.asarray(y, dtype=np.float64)
    return 0.5 * y * (1.0 + erf(y / math.sqrt(2.0)))


def activate(y, activation):
    if activation is None:
        return y
    if activation == "relu":
        return np.maximum(y, 0.0)
    if activation == "gelu":
        return gelu(y)
    raise ValueError(activation)


def linear_dequantized(Wq, w_scale, xq, x_scale, x_zero, bias=None, activation=None):
    """float64 Linear layer on the *dequantized* operands, shape (N, M).

    ``y[n, m] = s_w[m] * s_x[n] * sum_k Wq[m, k] (xq[n, k] - z_x[n]) + b[m]``.
    """
    N = xq.shape[0]
    xs = np.broadcast_to(np.asarray(x_scale, np.float64), (N,))
    xz = np.broadcast_to(np.asarray(x_zero, np.int64), (N,))
    acc = (xq.astype(np.int64) - xz[:, None]) @ Wq.astype(np.int64).T
    y = acc.astype(np.float64) * xs[:, None] * np.asarray(w_scale, np.float64)[None, :]
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[None, :]
    return activate(y, activation), y


def quantization_bound(x, W, w_scale, x_scale):
    """Per-element bound |y_quant - y_float| from the linear() docstring, shape (N, M).

    ``sum_k |x[n,k]| s_w[m]/2 + |W[m,k]| s_x[n]/2 + s_w[m] s_x[n]/4`` where W
    is stored (other weights are exactly zero in both).
    """
    x = np.abs(np.asarray(x, np.float64))
    W = np.asarray(W, np.float64)
    stored = (W != 0).astype(np.float64)
    sw = np.asarray(w_scale, np.float64)
    sx = np.broadcast_to(np.asarray(x_scale, np.float64), (x.shape[0],))
    term_x = (x @ stored.T) * sw[None, :] / 2
    term_w = sx[:, None] * (np.abs(W).sum(axis=1))[None, :] / 2
    term_xw = sx[:, None] * sw[None, :] * stored.sum(axis=1)[None, :] / 4
    return term_x + term_w + term_xw


# ---- block structure ----------------------------------------------------------------

def kept_blocks(P):
    """Boolean (M // R, K // C) mask of the blocks a BlockSparseMatrix stores."""
    R, C = P.blocksize
    mask = np.zeros((P.shape[0] // R, P.shape[1] // C), dtype=bool)
    for i in range(mask.shape[0]):
        mask[i, P.indices[P.indptr[i]:P.indptr[i + 1]]] = True
    return mask
