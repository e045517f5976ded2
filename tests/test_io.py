"""save_npz / load_npz: round trips, SciPy compatibility both ways, no pickle."""
import io
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import blocksparse
from blocksparse import BlockSparseMatrix
from strategies import bcsr_matrices

any_matrix = st.sampled_from([np.float32, np.float64, np.int8]).flatmap(bcsr_matrices)


def assert_same(V, W):
    assert V.shape == W.shape and V.blocksize == W.blocksize and V.dtype == W.dtype
    np.testing.assert_array_equal(V.data, W.data, strict=True)
    np.testing.assert_array_equal(V.indices, W.indices)
    np.testing.assert_array_equal(V.indptr, W.indptr)


@given(any_matrix, st.booleans())
def test_round_trip_in_memory(W, compressed):
    buf = io.BytesIO()
    snap = W.data.copy()
    blocksparse.save_npz(buf, W, compressed=compressed)
    np.testing.assert_array_equal(W.data, snap, strict=True)
    buf.seek(0)
    assert_same(blocksparse.load_npz(buf), W)


@given(any_matrix)
def test_scipy_reads_our_file(W):
    buf = io.BytesIO()
    blocksparse.save_npz(buf, W)
    buf.seek(0)
    S = sp.load_npz(buf)
    assert isinstance(S, sp.bsr_array)
    assert S.format == "bsr" and S.shape == W.shape and S.blocksize == W.blocksize
    assert S.dtype == W.dtype
    np.testing.assert_array_equal(S.indptr, W.indptr)
    np.testing.assert_array_equal(S.indices, W.indices)
    np.testing.assert_array_equal(S.data, W.data, strict=True)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "bsr"])
@pytest.mark.parametrize("cls", ["array", "matrix"])
def test_we_read_scipy_files(tmp_path, rng, fmt, cls):
    D = rng.standard_normal((8, 12))
    D[rng.random((8, 12)) < 0.6] = 0
    S = (sp.csr_array if cls == "array" else sp.csr_matrix)(D)
    S = S.asformat(fmt) if fmt != "bsr" else (sp.bsr_array if cls == "array"
                                             else sp.bsr_matrix)(D, blocksize=(2, 3))
    path = tmp_path / f"scipy_{fmt}.npz"
    sp.save_npz(path, S)
    W = blocksparse.load_npz(path)
    np.testing.assert_array_equal(W.toarray(), D, strict=True)
    if fmt == "bsr":
        assert W.blocksize == (2, 3)
    else:
        assert W.blocksize == (4, 1)  # the default blocksize for M % 4 == 0


def test_path_handling(tmp_path, rng):
    W = blocksparse.prune(rng.standard_normal((8, 8)).astype(np.float32), 0.5)
    blocksparse.save_npz(str(tmp_path / "w"), W)  # .npz appended, as NumPy does
    assert (tmp_path / "w.npz").exists()
    assert_same(blocksparse.load_npz(tmp_path / "w.npz"), W)
    blocksparse.save_npz(tmp_path / "u.npz", W, compressed=False)
    with zipfile.ZipFile(tmp_path / "u.npz") as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        assert set(z.namelist()) >= {"data.npy", "indices.npy", "indptr.npy", "shape.npy",
                                     "format.npy"}
    assert_same(blocksparse.load_npz(str(tmp_path / "u.npz")), W)


def test_loaded_matrix_is_independent_and_read_only(tmp_path):
    W = BlockSparseMatrix(np.eye(4, dtype=np.float32), blocksize=(2, 2))
    blocksparse.save_npz(tmp_path / "e.npz", W)
    V = blocksparse.load_npz(tmp_path / "e.npz")
    assert not V.data.flags.writeable
    np.testing.assert_array_equal(V @ np.ones(4, np.float32), np.ones(4, np.float32))


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        blocksparse.load_npz(tmp_path / "nope.npz")


def test_save_refuses_non_blocksparse(tmp_path):
    with pytest.raises(TypeError, match="matrix must be a BlockSparseMatrix"):
        blocksparse.save_npz(tmp_path / "x.npz", sp.csr_array(np.eye(2)))


def test_scipy_bsr_file_with_unsorted_and_duplicate_blocks(tmp_path):
    """scipy's own BSR files need not be canonical: load them like scipy does."""
    data = np.arange(1, 5, dtype=np.float32).reshape(4, 1, 1)
    S = sp.bsr_array((data, np.array([2, 0, 1, 1]), np.array([0, 2, 4])), shape=(2, 3))
    assert not S.has_canonical_format
    sp.save_npz(tmp_path / "u.npz", S)
    W = blocksparse.load_npz(tmp_path / "u.npz")
    np.testing.assert_array_equal(W.toarray(), S.toarray(), strict=True)
    W.check_format(full_check=True)
    # out-of-range indices in such a file are still refused
    S.indices[0] = 7
    sp.save_npz(tmp_path / "bad.npz", S)
    with pytest.raises(ValueError, match="indices must lie in"):
        blocksparse.load_npz(tmp_path / "bad.npz")


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_non_bsr_file_objects_are_read_from_their_start(fmt):
    """A non-BSR file is read twice; the second read must not depend on where
    the first left the stream (np.savez's member order exposed this)."""
    D = np.array([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]] * 2)
    S = sp.csr_array(D).asformat(fmt)
    buf = io.BytesIO()
    buf.write(b"leading bytes that are not ours")
    start = buf.tell()
    np.savez(buf, data=S.data, indices=S.indices, indptr=S.indptr,
             shape=np.array(S.shape), format=np.array(fmt.encode()))
    buf.seek(start)
    W = blocksparse.load_npz(buf)
    np.testing.assert_array_equal(W.toarray(), D, strict=True)
