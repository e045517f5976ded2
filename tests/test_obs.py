"""blocksparse.prune_obs: against a plain float64 OBS loop, and never worse than masking.

The reference below is the textbook form of the same algorithm, written
for clarity: one weight at a time, with the inverse of the Hessian of the
not-yet-visited inputs recomputed by ``np.linalg.inv`` at every step and
no batching, no Cholesky factor.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import blocksparse
from reference import kept_blocks as kept_mask

BLOCKSIZES = [(4, 1), (1, 4), (2, 2), (1, 1)]


def damped(H, damping):
    H = H.astype(np.float64).copy()
    d = np.diag(H).copy()
    mean = d[d > 0].mean()
    dead = d <= 0
    H[dead, dead] = mean
    return H + damping * mean * np.eye(len(H))


def reference_obs(W, H, sparsity, blocksize, group, damping=0.01, balanced=False):
    """Plain OBS: returns (pruned W, keep mask of blocks)."""
    W0 = W.astype(np.float64)
    W = W0.copy()
    M, K = W.shape
    R, C = blocksize
    nbr, nbc = M // R, K // C
    Hd = damped(H, damping)
    keep = np.ones((nbr, nbc), dtype=bool)
    total = round(sparsity * nbc) if balanced else round(sparsity * nbr * nbc)
    done = 0
    for c0 in range(0, K, group):
        c1 = min(c0 + group, K)
        bcols = range(c0 // C, c1 // C)
        # saliency of each block: sum over its rows of w_S ([H_FF^-1]_SS)^-1 w_S,
        # F = the inputs from the block's first column on
        sal = {}
        for br in range(nbr):
            for bc in bcols:
                s0 = bc * C
                Hinv = np.linalg.inv(Hd[s0:, s0:])[:C, :C]
                sal[br, bc] = sum(W[m, s0:s0 + C] @ np.linalg.solve(Hinv, W[m, s0:s0 + C])
                                  for m in range(br * R, br * R + R))
        target = round(total * (c1 // C) / nbc)
        drop = target - done
        done = target
        if balanced:
            for br in range(nbr):
                order = sorted(bcols, key=lambda bc: (sal[br, bc], bc))
                for bc in order[:drop]:
                    keep[br, bc] = False
        else:
            order = sorted(sal, key=lambda k: (sal[k], k))
            for br, bc in order[:drop]:
                keep[br, bc] = False
        for j in range(c0, c1):
            Hinv = np.linalg.inv(Hd[j:, j:])
            for m in range(M):
                if not keep[m // R, j // C]:
                    W[m, j:] -= W[m, j] / Hinv[0, 0] * Hinv[0, :]
                    W[m, j] = 0.0
    # rows where the update does not pay (on the undamped H) keep the masked weights
    full = np.repeat(np.repeat(keep, R, axis=0), C, axis=1)
    masked = np.where(full, W0, 0.0)
    for m in range(M):
        d_obs, d_mask = W[m] - W0[m], masked[m] - W0[m]
        if d_obs @ H @ d_obs > d_mask @ H @ d_mask:
            W[m] = masked[m]
    return W, keep


def correlated_inputs(rng, N, K):
    """Inputs with correlated features and uneven scales, like activations."""
    return (rng.standard_normal((N, K)) @ rng.standard_normal((K, K))
            * rng.uniform(0.2, 3.0, K))


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(BLOCKSIZES), st.integers(1, 3), st.integers(1, 4),
       st.sampled_from([0.25, 0.5, 0.75, 0.9]), st.sampled_from([None, 4, 8]),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_matches_plain_reference(blocksize, nbr, group_blocks, sparsity, group, balanced,
                                 seed):
    R, C = blocksize
    rng = np.random.default_rng(seed)
    M, K = nbr * R, 4 * group_blocks * C
    W = rng.standard_normal((M, K))
    X = correlated_inputs(rng, 3 * K, K)
    H = X.T @ X
    P = blocksparse.prune_obs(W, sparsity, X, blocksize=blocksize, block_columns=group,
                              balanced=balanced)
    want, keep = reference_obs(W, H, sparsity, blocksize, group or K, balanced=balanced)
    np.testing.assert_array_equal(kept_mask(P), keep)
    np.testing.assert_allclose(P.toarray(), want, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("blocksize", BLOCKSIZES)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.8, 1.0])
def test_exact_sparsity_and_block_structure(blocksize, sparsity):
    rng = np.random.default_rng(1)
    R, C = blocksize
    M, K = 12 * R, 24 * C
    W = rng.standard_normal((M, K)).astype(np.float32)
    before = W.copy()
    X = correlated_inputs(rng, 200, K)
    for balanced in (False, True):
        P = blocksparse.prune_obs(W, sparsity, X, blocksize=blocksize, balanced=balanced)
        P.check_format(full_check=True)
        assert P.blocksize == blocksize and P.shape == W.shape and P.dtype == np.float32
        nbr, nbc = M // R, K // C
        keep = kept_mask(P)
        if balanced:
            assert np.all(keep.sum(axis=1) == nbc - round(sparsity * nbc))
        else:
            assert P.nnzb == nbr * nbc - round(sparsity * nbr * nbc)
        full = np.repeat(np.repeat(keep, R, axis=0), C, axis=1)
        assert np.all(P.toarray()[~full] == 0)
    np.testing.assert_array_equal(W, before)  # input untouched


def output_error(W, V, X):
    return float(np.linalg.norm(X @ (W - V).T))


@pytest.mark.parametrize("blocksize", BLOCKSIZES)
@pytest.mark.parametrize("seed", range(4))
def test_never_worse_than_magnitude(blocksize, seed):
    rng = np.random.default_rng(seed)
    R, C = blocksize
    M, K = 8 * R, 32 * C
    W = rng.standard_normal((M, K))
    X = correlated_inputs(rng, 4 * K, K)
    for sparsity in (0.5, 0.7, 0.9):
        mag = blocksparse.prune(W, sparsity, blocksize=blocksize)
        # on magnitude's own mask: the update alone must not hurt
        same = blocksparse.prune_obs(W, None, X, blocksize=blocksize, mask=kept_mask(mag))
        np.testing.assert_array_equal(kept_mask(same), kept_mask(mag))
        assert output_error(W, same.toarray(), X) <= output_error(W, mag.toarray(), X) + 1e-9
        # with its own mask it is better, clearly so at moderate sparsity
        own = blocksparse.prune_obs(W, sparsity, X, blocksize=blocksize)
        margin = 0.9 if sparsity <= 0.5 else 1.0
        assert output_error(W, own.toarray(), X) < margin * output_error(W, mag.toarray(), X)


def test_hessian_argument_is_the_same_as_inputs():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((8, 16))
    X = correlated_inputs(rng, 64, 16)
    a = blocksparse.prune_obs(W, 0.5, X)
    b = blocksparse.prune_obs(W, 0.5, hessian=2.5 * (X.T @ X))  # any positive multiple
    np.testing.assert_allclose(a.toarray(), b.toarray(), rtol=1e-9, atol=1e-12)


def test_zero_sparsity_keeps_weights_and_dead_inputs_are_handled():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((8, 8))
    X = correlated_inputs(rng, 50, 8)
    X[:, 3] = 0.0  # an input that is never active
    P = blocksparse.prune_obs(W, 0.0, X)
    np.testing.assert_array_equal(P.toarray(), W)
    Q = blocksparse.prune_obs(W, 0.5, X)
    assert np.all(np.isfinite(Q.toarray()))
    # no data on it: no cross terms, so updates elsewhere leave its kept weights alone
    kept = np.repeat(kept_mask(Q)[:, 3], 4)
    np.testing.assert_array_equal(Q.toarray()[kept, 3], W[kept, 3])


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(), ValueError, "X or their Gram matrix"),
    (dict(X=np.ones((4, 8)), hessian=np.eye(8)), ValueError, "one of them"),
    (dict(X=np.ones((4, 7))), ValueError, r"X must have shape \(N, 8\)"),
    (dict(hessian=np.eye(7)), ValueError, r"hessian must have shape \(8, 8\)"),
    (dict(hessian=np.triu(np.ones((8, 8)))), ValueError, "symmetric"),
    (dict(X=np.full((4, 8), np.nan)), ValueError, "X has NaN"),
    (dict(X=np.ones((4, 8)), damping=-1.0), ValueError, "damping"),
    (dict(X=np.ones((4, 8)), blocksize=(3, 1)), ValueError, "does not divide"),
    (dict(X=np.ones((4, 8)), block_columns=6, blocksize=(1, 4)), ValueError, "block_columns"),
    (dict(X=np.ones((4, 8)), mask=np.ones((2, 2), bool)), ValueError, "mask must be"),
    (dict(X=np.ones((4, 8)), dtype=np.int8), TypeError, "dtype must be float32"),
    (dict(X=np.array([["a"] * 8])), TypeError, "X must be a real numeric"),
])
def test_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        blocksparse.prune_obs(np.ones((8, 8)), 0.5, **kwargs)


def test_bad_sparsity():
    X = np.ones((4, 8))
    with pytest.raises(ValueError, match=r"sparsity must lie in \[0, 1\]"):
        blocksparse.prune_obs(np.ones((8, 8)), 1.5, X)
    with pytest.raises(ValueError, match="unless a mask"):
        blocksparse.prune_obs(np.ones((8, 8)), None, X)
    with pytest.raises(TypeError, match="sparsity must be a number"):
        blocksparse.prune_obs(np.ones((8, 8)), "0.5", X)
