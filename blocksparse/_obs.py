"""One-shot block pruning with second-order reconstruction (Optimal Brain Surgeon).

For a Linear layer ``y = x @ W.T`` the output error of a change ``dW`` over
calibration inputs ``X`` (N, K) is ``||X dW.T||^2 = sum_m dW[m] H dW[m].T``
with ``H = X.T X``: every output row has the same quadratic form, so rows
are independent problems that share ``H``.  Removing a set S of one row's
weights and moving the others optimally costs ``w_S ([H^-1]_SS)^-1 w_S.T``
(its saliency) and updates the row by ``-w_S ([H^-1]_SS)^-1 [H^-1]_S:``
(Hassibi & Stork 1993).

The sweep here is the column-by-column form of SparseGPT (Frantar &
Alistarh 2023): columns are visited left to right and, once visited, are
frozen; removing weights in column k then needs only row k of the upper
Cholesky factor U of ``H^-1`` (``H^-1 = U.T U``), because the inverse
Hessian of the not-yet-frozen columns F = {k, ..., K-1} is ``U_FF.T U_FF``.
Blocks of one row along K ((1, 4)) use the C x C diagonal block of U: their
joint saliency is ``||U_SS^-T w_S||^2``, and removing their columns one
after another in the sweep is the same as removing them jointly.  Blocks
of R rows in one column ((4, 1)) sum their rows' saliencies, as rows are
independent.  Updates to the columns right of the current group of
`block_columns` are batched into one matrix product (lazy updates), and
which blocks to remove is decided when the sweep reaches each group, from
the weights as they are then.
"""
import numbers

import numpy as np
import scipy.linalg

from ._matrix import BlockSparseMatrix, _check_blocksize, _check_dtype
from ._prune import _drop_counts, _from_keep

__all__ = ["prune_obs"]


def _float_matrix(a, name, ndim=2):
    if isinstance(a, BlockSparseMatrix):
        a = a.toarray()
    a = np.asarray(a)
    if a.dtype == object or a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has NaN or Inf values")
    return a


def _check_fraction(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def _check_damping(damping):
    if isinstance(damping, bool) or not isinstance(damping, numbers.Real) or \
            not (0.0 <= float(damping) < np.inf):
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    return float(damping)


def _check_block_columns(block_columns, C):
    if block_columns is None:
        return None
    if isinstance(block_columns, bool) or not isinstance(block_columns, numbers.Integral) or \
            block_columns < 1 or block_columns % C:
        raise ValueError(f"block_columns must be None or a positive multiple of the block's "
                         f"C = {C} columns, got {block_columns!r}")
    return int(block_columns)


def _damped(hessian, damping):
    """float64 H + damping * mean(diag H) * I; zero-variance inputs get the mean."""
    H = np.array(hessian, dtype=np.float64)
    d = np.diag(H).copy()
    mean = d[d > 0].mean() if np.any(d > 0) else 1.0
    dead = d <= 0
    H[dead, dead] = mean  # an input that is always 0: no cross terms, an average scale
    H[np.diag_indices_from(H)] += damping * mean
    return H


def _inverse_cholesky(H, damping):
    """Upper U with H^-1 = U.T U (float64)."""
    try:
        L = scipy.linalg.cholesky(H, lower=True)
        Hinv = scipy.linalg.cho_solve((L, True), np.eye(H.shape[0]))
        return scipy.linalg.cholesky(Hinv, lower=False)
    except np.linalg.LinAlgError:
        raise ValueError(f"the damped input Hessian is not positive definite (damping = "
                         f"{damping}); use a larger damping or more calibration data") from None


def _row_saliency(W, U, c0, c1, C):
    """(M, c1 - c0) saliency of removing each row's C-column block in [c0, c1)."""
    M = W.shape[0]
    nb = (c1 - c0) // C
    if C == 1:
        return W[:, c0:c1] ** 2 / np.diag(U)[c0:c1] ** 2
    out = np.empty((M, nb))
    for b in range(nb):
        s = slice(c0 + b * C, c0 + (b + 1) * C)
        z = scipy.linalg.solve_triangular(U[s, s], W[:, s].T, trans="T", lower=False)
        out[:, b] = np.sum(z * z, axis=0)
    return out


def _choose(saliency, drop):
    """keep mask (rows, cols): `drop` lowest per row (1-D drop) or overall (int)."""
    keep = np.ones(saliency.shape, dtype=bool)
    if np.ndim(drop):
        for i, d in enumerate(drop):
            if d:
                keep[i, np.argsort(saliency[i], kind="stable")[:d]] = False
    elif drop:
        keep.ravel()[np.argsort(saliency.ravel(), kind="stable")[:drop]] = False
    return keep


def _obs_sweep(W, U, blocksize, block_columns, keep=None, sparsity=None, balanced=False,
               free_columns=0):
    """Prune W (float64, modified in place) with the column sweep.

    Either `keep` (nbr, nbc) is given, or it is chosen group by group with
    exactly round(sparsity * blocks) blocks removed (per block row if
    balanced).  The last `free_columns` columns are never pruned, only
    updated.  Returns the keep mask.
    """
    M, K = W.shape
    K -= free_columns
    R, C = blocksize
    nbr, nbc = M // R, K // C
    fixed = keep is not None
    block_columns = block_columns or K
    if not fixed:
        keep = np.ones((nbr, nbc), dtype=bool)
        total = _drop_counts(sparsity, nbr, nbc, balanced)
        dropped = np.zeros(nbr, dtype=np.int64) if balanced else 0
    for c0 in range(0, K, block_columns):
        c1 = min(c0 + block_columns, K)
        b0, b1 = c0 // C, c1 // C
        if not fixed:
            # the share of the total that falls to this group, rounded
            # cumulatively so that the layer ends exactly on target
            target = int(round(total * b1 / nbc))
            drop = target - dropped
            dropped = target
            if balanced:
                drop = np.full(nbr, drop, dtype=np.int64)
            sal = _row_saliency(W, U, c0, c1, C).reshape(nbr, R, b1 - b0).sum(axis=1)
            keep[:, b0:b1] = _choose(sal, drop)
        row_keep = np.repeat(keep[:, b0:b1], R, axis=0)  # (M, blocks in the group)
        W1 = W[:, c0:c1]  # a view: the group is updated in place
        U1 = U[c0:c1, c0:c1]
        err = np.zeros((M, c1 - c0))
        for j in range(c1 - c0):
            pruned = ~row_keep[:, j // C]
            if not pruned.any():
                continue
            e = np.where(pruned, W1[:, j], 0.0) / U1[j, j]
            W1[:, j:] -= np.outer(e, U1[j, j:])
            W1[pruned, j] = 0.0
            err[:, j] = e
        if c1 < W.shape[1]:
            W[:, c1:] -= err @ U[c0:c1, c1:]
    return keep


def _masked(W, keep, blocksize):
    """Copy of W with the blocks outside `keep` set to zero (free columns kept)."""
    R, C = blocksize
    full = np.ones(W.shape, dtype=bool)
    full[:, :keep.shape[1] * C] = np.repeat(np.repeat(keep, R, axis=0), C, axis=1)
    return np.where(full, W, 0.0)


def _row_errors(D, H):
    """Per-row quadratic errors d_m H d_m.T for D (M, K), float64."""
    return np.einsum("mk,mk->m", D @ H, D)


def obs_prune_dense(W, H, sparsity=None, *, blocksize=(4, 1), damping=0.01,
                    block_columns=128, balanced=False, keep=None, free_columns=0):
    """The working core of :func:`prune_obs` on checked float64 arrays.

    The last `free_columns` columns of W (a bias, as the weight of a
    constant input 1) are updated but never pruned and lie outside the
    blocks.

    Returns ``(W_new, keep, errors)``: the pruned and updated (M, K)
    float64 weight, the (nbr, nbc) keep mask and a dict of relative
    reconstruction errors ``tr(dW H dW.T) / tr(W H W.T)`` on the
    undamped `H`: ``"obs"`` for the result, ``"masked"`` for the same mask
    without the update.  Rows where the update would not lower the error
    (possible only through damping) keep their plain masked weights.
    """
    W0 = np.array(W, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    R, C = blocksize
    U = _inverse_cholesky(_damped(H, damping), damping)
    Wn = W0.copy()
    keep = _obs_sweep(Wn, U, (R, C), block_columns, keep=keep, sparsity=sparsity,
                      balanced=balanced, free_columns=free_columns)
    Wm = _masked(W0, keep, (R, C))
    e_obs = _row_errors(Wn - W0, H)
    e_mask = _row_errors(Wm - W0, H)
    worse = e_obs > e_mask
    Wn[worse] = Wm[worse]
    e_obs[worse] = e_mask[worse]
    base = max(float(np.sum(_row_errors(W0, H))), np.finfo(np.float64).tiny)
    return Wn, keep, {"obs": float(e_obs.sum()) / base, "masked": float(e_mask.sum()) / base}


def prune_obs(W, sparsity, X=None, *, hessian=None, blocksize=(4, 1), damping=0.01,
              block_columns=128, balanced=False, mask=None, dtype=None):
    """Remove blocks by second-order saliency and update the rest (OBS).

    One-shot pruning with reconstruction for a Linear weight: given the
    layer's inputs `X` on calibration data (or their Gram matrix
    ``hessian = X.T @ X``), choose the blocks whose removal raises the
    output error ``||X @ (W - W').T||`` least, and move the remaining
    weights to compensate (Optimal Brain Surgeon, in the column-sweep form
    of SparseGPT; see Notes).  The error is never larger than that of
    removing the same blocks without the update.

    Which axis a block runs along: for a weight of shape (out_features,
    in_features) = (M, K), ``blocksize=(4, 1)`` is four consecutive output
    rows in one input column (the paper's "4x1", the default) and
    ``blocksize=(1, 4)`` four consecutive weights of one row along K.

    Parameters
    ----------
    W : array_like of shape (M, K) or BlockSparseMatrix
        The dense weights (a BlockSparseMatrix is made dense first).
    sparsity : float in [0, 1] or None
        Fraction of blocks to remove: exactly ``round(sparsity * nblocks)``
        (per block row ``round(sparsity * blocks_per_row)`` with
        `balanced`).  None only together with `mask`.
    X : array_like of shape (N, K), optional
        The layer's inputs, one row per calibration token.
    hessian : array_like of shape (K, K), optional
        ``X.T @ X`` summed over the calibration tokens, instead of `X`
        (any positive multiple gives the same result).
    blocksize : tuple of int, optional
        Block shape ``(R, C)``; must divide the shape of `W`.
    damping : float, optional
        Added to the diagonal of the Hessian as a fraction of its mean
        diagonal, so that it can be inverted and the update stays modest
        where the data say little.
    block_columns : int or None, optional
        Columns of `W` per step of the sweep (a multiple of C): blocks to
        remove are chosen per step, from the weights as the sweep has made
        them, with each step's share of the total removed.  None chooses
        all blocks at the start.
    balanced : bool, optional
        Remove the same number of blocks from every block row.
    mask : array_like of bool, shape (M // R, K // C), optional
        Blocks to keep (True), instead of choosing them; the weights are
        still updated.
    dtype : dtype, optional
        Storage dtype of the result (float32 or float64); float64 for
        integer `W`, else the dtype of `W`.

    Returns
    -------
    BlockSparseMatrix
        With the requested blocksize; kept blocks are stored even if they
        became zero, so ``density == 1 - removed / nblocks`` exactly.

    Raises
    ------
    ValueError
        If neither or both of `X` and `hessian` are given, shapes do not
        match, `blocksize` does not divide the shape, values are not
        finite, `sparsity` or `damping` is out of range, or the damped
        Hessian cannot be factored.
    TypeError
        For non-numeric input.

    See Also
    --------
    prune : Magnitude pruning, without data.

    Notes
    -----
    Every output row has the same quadratic error form ``H = X.T X``
    (damped by ``damping * mean(diag(H))``).  The sweep visits the input
    columns left to right; removing weight ``w[m, k]`` then costs
    ``w[m, k]**2 / U[k, k]**2`` and moves the unvisited weights of row m by
    ``-w[m, k] / U[k, k] * U[k, k:]``, with U the upper Cholesky factor of
    ``H^-1``.  A (4, 1) block's saliency is the sum over its four rows; a
    (1, 4) block's is ``||U_SS^-T w_S||^2`` over its 4 x 4 block of U,
    the joint OBS saliency.  All of it runs in float64.

    References: B. Hassibi and D. Stork, "Second order derivatives for
    network pruning: Optimal Brain Surgeon", NIPS 1992; E. Frantar and
    D. Alistarh, "SparseGPT: Massive language models can be accurately
    pruned in one-shot", ICML 2023; E. Kurtic et al., "The Optimal BERT
    Surgeon", EMNLP 2022.

    Examples
    --------
    >>> import numpy as np
    >>> import blocksparse
    >>> rng = np.random.default_rng(0)
    >>> W = rng.standard_normal((8, 16))
    >>> X = rng.standard_normal((200, 16)) @ rng.standard_normal((16, 16))
    >>> P = blocksparse.prune_obs(W, 0.5, X, blocksize=(4, 1))
    >>> P.density
    0.5
    >>> err = lambda V: np.linalg.norm(X @ (W - V).T)
    >>> bool(err(P.toarray()) < err(blocksparse.prune(W, 0.5).toarray()))
    True
    """
    W = _float_matrix(W, "W")
    M, K = W.shape
    R, C = _check_blocksize(blocksize, (M, K))
    if (X is None) == (hessian is None):
        raise ValueError("give the layer inputs X or their Gram matrix hessian (one of them)")
    if X is not None:
        X = _float_matrix(X, "X")
        if X.shape[1] != K:
            raise ValueError(f"X must have shape (N, {K}) for W of shape {W.shape}, got "
                             f"{X.shape}")
        X = X.astype(np.float64)
        H = X.T @ X
    else:
        H = _float_matrix(hessian, "hessian").astype(np.float64)
        if H.shape != (K, K):
            raise ValueError(f"hessian must have shape ({K}, {K}), got {H.shape}")
        if not np.allclose(H, H.T, rtol=1e-6, atol=1e-12 * max(np.abs(H).max(), 1.0)):
            raise ValueError("hessian must be symmetric (X.T @ X)")
    keep = None
    if mask is not None:
        keep = np.asarray(mask)
        if keep.dtype != bool or keep.shape != (M // R, K // C):
            raise ValueError(f"mask must be a bool array of shape {(M // R, K // C)} (one "
                             f"entry per block), got {keep.dtype} {keep.shape}")
        keep = keep.copy()
    elif sparsity is None:
        raise ValueError("sparsity must be a number in [0, 1] unless a mask is given")
    if keep is None:
        sparsity = _check_fraction(sparsity, "sparsity")
    damping = _check_damping(damping)
    block_columns = _check_block_columns(block_columns, C)
    out_dtype = _check_dtype(dtype if dtype is not None else
                             (W.dtype if W.dtype in (np.float32, np.float64) else np.float64))
    if out_dtype == np.int8:
        raise TypeError("dtype must be float32 or float64: quantize the result with "
                        "blocksparse.quantize")
    Wn, keep, _ = obs_prune_dense(W, H, sparsity, blocksize=(R, C), damping=damping,
                                  block_columns=block_columns, balanced=balanced, keep=keep)
    return _from_keep(Wn, keep, (R, C), out_dtype)
