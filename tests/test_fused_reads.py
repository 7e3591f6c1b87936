"""Fused reads: dask-em's own sources read each block inside its statistics task."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import make_blobs

from dask_em import GaussianMixture
from dask_em.engine._em import em_pass
from dask_em.engine._reduce import block_reader, register_block_reader, tree_reduce
from dask_em.io import load_data, read_array
from dask_em.jobs.config import DataConfig, JobError


@pytest.fixture(scope="module")
def X():
    return make_blobs(n=2300, d=3, k=3, seed=4)[0]


def _zarr(path, X, chunk_rows, fmt=3, compressed=False):
    import zarr

    extra = {} if compressed else {"compressors": None}
    z = zarr.create_array(
        str(path), shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype=X.dtype,
        zarr_format=fmt, **extra,
    )  # fmt: skip
    z[:] = X
    return path


def _blocks(x):
    offsets = np.concatenate([[0], np.cumsum(x.chunks[0])])
    return list(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True))


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("compressed", [False, True])
def test_zarr_blocks_read_into_the_buffer_equal_zarr(tmp_path, X, fmt, compressed):
    # zarr chunks of 700 rows, blocks of 1000: blocks span chunks and end mid-chunk;
    # the last chunk is an edge chunk (stored full-sized).
    path = _zarr(tmp_path / "x.zarr", X, 700, fmt, compressed)
    x = load_data(DataConfig(source="zarr", path=str(path), chunk_rows=1000))
    reader = block_reader(x)
    assert reader is not None
    assert (reader.raw is None) == compressed
    for a, b in _blocks(x):
        out = np.full((b - a, X.shape[1]), np.nan)
        got = reader.read_rows(a, b, out)
        np.testing.assert_array_equal(got, X[a:b])
        if not compressed:
            assert got is out


def test_zarr_chunk_never_written_reads_as_the_fill_value(tmp_path, X):
    import zarr

    path = _zarr(tmp_path / "x.zarr", X, 500)
    (path / "c" / "1" / "0").unlink()
    expected = zarr.open_array(str(path), mode="r")[:]
    assert np.all(expected[500:1000] == 0)
    x = load_data(DataConfig(source="zarr", path=str(path), chunk_rows=1000))
    out = np.full((1000, X.shape[1]), np.nan)
    np.testing.assert_array_equal(block_reader(x).read_rows(0, 1000, out), expected[:1000])


@pytest.mark.parametrize("damage", ["truncate", "extend"])
def test_damaged_uncompressed_chunk_names_the_file_and_rows(tmp_path, X, damage):
    path = _zarr(tmp_path / "x.zarr", X, 500)
    chunk = path / "c" / "2" / "0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-8] if damage == "truncate" else data + b"\0" * 8)
    x = load_data(DataConfig(source="zarr", path=str(path), chunk_rows=500))
    with pytest.raises(JobError, match=r"rows 1000-1499 of .*x\.zarr.*c/2/0"):
        block_reader(x).read_rows(1000, 1500, np.empty((500, X.shape[1])))
    with dask.config.set(scheduler="threads"), pytest.raises(JobError, match="rows 1000-1499"):
        GaussianMixture(2, max_iter=2, init_params="random", random_state=0).fit(x)


@pytest.mark.parametrize("source", ["npy", "hdf5"])
def test_npy_and_hdf5_blocks_read_into_the_buffer(tmp_path, X, source):
    import h5py

    if source == "npy":
        np.save(tmp_path / "x.npy", X)
        cfg = DataConfig(source="npy", path=str(tmp_path / "x.npy"), chunk_rows=700)
    else:
        with h5py.File(tmp_path / "x.h5", "w") as f:
            f["x"] = X
        cfg = DataConfig(source="hdf5", path=str(tmp_path / "x.h5"), dataset="x", chunk_rows=700)
    x = load_data(cfg)
    reader = block_reader(x)
    for a, b in _blocks(x):
        out = np.full((b - a, X.shape[1]), np.nan)
        got = reader.read_rows(a, b, out)
        assert got is out
        np.testing.assert_array_equal(got, X[a:b])


def _stats_keys(graph):
    return {k[0].rsplit("-", 1)[0] for k in dict(graph.__dask_graph__()) if isinstance(k, tuple)}


def test_the_statistics_tasks_read_registered_arrays_and_only_those(tmp_path, X):
    path = _zarr(tmp_path / "x.zarr", X, 500)
    x = load_data(DataConfig(source="zarr", path=str(path), chunk_rows=500))

    def chunk(block, shared, row_offset, block_index, w=None):
        return (np.array([block.sum()]),)

    fused = tree_reduce(x, chunk, None, fuse_reads=True)
    assert "em-stats-read" in _stats_keys(fused)
    assert fused.key != tree_reduce(x, chunk, None).key  # one graph may hold both
    # The array's own read tasks are not in the graph: the block is no task result.
    assert not any(isinstance(k, tuple) and k[0] == x.name for k in dict(fused.dask))
    # Not asked for, or not the registered object (a slice, a persisted copy): the
    # blocks of the array itself.
    with dask.config.set(scheduler="threads"):
        copies = [x[:2000], x.persist()]
    for other, fuse in [(x, False)] + [(c, True) for c in copies]:
        assert "em-stats" in _stats_keys(tree_reduce(other, chunk, None, fuse_reads=fuse))
        assert block_reader(other) is None or other is x
    with dask.config.set(scheduler="threads"):
        (a,), (b,) = dask.compute(fused, tree_reduce(x, chunk, None))
    np.testing.assert_allclose(a, X.sum(), rtol=1e-13)
    np.testing.assert_allclose(b, X.sum(), rtol=1e-13)


def test_a_registration_goes_with_its_array():
    x = da.zeros((10, 2), chunks=(5, 2))
    register_block_reader(x, object())
    assert block_reader(x) is not None
    name = id(x)
    del x
    from dask_em.engine import _reduce

    assert name not in _reduce._READERS


@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied", "spherical"])
def test_fit_from_fused_reads_equals_the_in_memory_fit(tmp_path, X, covariance_type):
    # 9 blocks on 2 threads: each thread's buffer is reused several times while earlier
    # blocks' statistics wait to be combined, so a statistic that kept a view of its block
    # would change.
    path = _zarr(tmp_path / "x.zarr", X, 256)
    x = load_data(DataConfig(source="zarr", path=str(path), chunk_rows=256))
    assert x.numblocks[0] == 9 and block_reader(x) is not None
    w = np.random.default_rng(1).uniform(0.5, 2.0, X.shape[0])
    kw = dict(covariance_type=covariance_type, max_iter=15, tol=0, random_state=0)
    with dask.config.set(scheduler="threads", num_workers=2):
        fused = GaussianMixture(3, **kw).fit(x, sample_weight=w)
        ref = GaussianMixture(3, **kw).fit(da.from_array(X, chunks=(256, -1)), sample_weight=w)
    np.testing.assert_allclose(fused.lower_bounds_, ref.lower_bounds_, rtol=1e-13)
    np.testing.assert_allclose(fused.means_, ref.means_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fused.covariances_, ref.covariances_, rtol=1e-12, atol=1e-12)


def test_fused_reads_on_worker_processes(tmp_path, X, client):
    path = _zarr(tmp_path / "x.zarr", X, 300)
    x = load_data(DataConfig(source="zarr", path=str(path), chunk_rows=300))
    gm = GaussianMixture(3, max_iter=3, tol=0, random_state=0)
    params = gm.fit(X[:500])._params()
    fused = em_pass(x, [params])
    ref = em_pass(da.from_array(X, chunks=(300, -1)), [params])
    assert fused[0].n_rows == X.shape[0]
    np.testing.assert_allclose(fused[0].s2, ref[0].s2, rtol=1e-12)
    np.testing.assert_allclose(fused[0].loglik, ref[0].loglik, rtol=1e-13)


def test_each_thread_reads_into_a_buffer_of_its_own(tmp_path):
    # 60 blocks on 2 threads overlap: one buffer shared by both threads changed the
    # log-likelihood by ~7e-4 relative in 4 of 5 passes when tried.
    X = make_blobs(n=60_000, d=3, k=3, seed=4)[0]
    path = _zarr(tmp_path / "x.zarr", X, 1000)
    x = load_data(DataConfig(source="zarr", path=str(path), chunk_rows=1000))
    params = GaussianMixture(3, max_iter=3, tol=0, random_state=0).fit(X[:500])._params()
    in_memory = da.from_array(X, chunks=(1000, -1))
    with dask.config.set(scheduler="threads", num_workers=2):
        ref = em_pass(in_memory, [params])[0]
        for _ in range(5):
            got = em_pass(x, [params])[0]
            np.testing.assert_allclose(got.loglik, ref.loglik, rtol=1e-13)
            np.testing.assert_allclose(got.s2, ref.s2, rtol=1e-12)


def test_read_array_opens_files_by_suffix_for_fused_reads(tmp_path, X):
    import h5py

    _zarr(tmp_path / "x.zarr", X, 500)
    np.save(tmp_path / "x.npy", X)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = X
    for name, kw in [("x.zarr", {}), ("x.npy", {}), ("x.h5", {"dataset": "x"})]:
        x = read_array(tmp_path / name, chunk_rows=600, **kw)
        assert x.chunks[0][0] == 600 and block_reader(x) is not None
        np.testing.assert_array_equal(x.compute(scheduler="sync"), X)
    x32 = read_array(tmp_path / "x.zarr", dtype="float32")
    assert x32.dtype == np.float32
    with pytest.raises(ValueError, match="x.csv.*source="):
        read_array(tmp_path / "x.csv")
    with pytest.raises(JobError, match="nope.zarr"):
        read_array(tmp_path / "nope.zarr")


def test_prefetch_hints_skip_chunks_never_written_and_the_end(tmp_path, X):
    path = _zarr(tmp_path / "x.zarr", X, 500)
    (path / "c" / "3" / "0").unlink()
    x = load_data(DataConfig(source="zarr", path=str(path), chunk_rows=500))
    raw = block_reader(x).raw
    raw._prefetch(2, 10)  # chunks 2..4 exist but 3; the range runs past the last
    out = np.empty((500, X.shape[1]))
    np.testing.assert_array_equal(raw.read(1000, 1500, out), X[1000:1500])
    np.testing.assert_array_equal(raw.read(1500, 2000, out), 0.0)


@pytest.mark.parametrize("weighted", [False, True])
def test_blocks_with_large_values_are_read_several_to_a_task(tmp_path, X, monkeypatch, weighted):
    # Large values (over _GROUPED_VALUE_BYTES, lowered here to fit the test's data) make
    # at most two tasks per thread, each adding its blocks' statistics as it reads them:
    # the values that wait for the tree no longer grow with the number of blocks.
    from dask_em.engine import _memory

    path = _zarr(tmp_path / "x.zarr", X, 100)
    x = load_data(DataConfig(source="zarr", path=str(path), chunk_rows=100))
    assert x.numblocks[0] == 23
    params = GaussianMixture(3, random_state=0).fit(X[:500])._params()
    w = np.random.default_rng(2).uniform(0.5, 2.0, X.shape[0]) if weighted else None
    dw = None if w is None else da.from_array(w, chunks=(x.chunks[0],))
    with dask.config.set(scheduler="threads", num_workers=2):
        ungrouped = em_pass(x, [params], weights=dw)
        monkeypatch.setattr(_memory, "_GROUPED_VALUE_BYTES", 1)
        graph = tree_reduce(
            x, lambda b, s, r, i, w=None: (np.array([b.sum()]),), None, fuse_reads=True
        )
        assert sum(1 for k in dict(graph.dask) if "stats-read" in str(k)) == 4
        grouped = em_pass(x, [params], weights=dw)
    ref = em_pass(da.from_array(X, chunks=(100, -1)), [params], weights=dw)
    for got in (grouped[0], ungrouped[0]):
        assert got.n_rows == X.shape[0]
        np.testing.assert_allclose(got.weight_total, ref[0].weight_total, rtol=1e-14)
        np.testing.assert_allclose(got.nk, ref[0].nk, rtol=1e-12)
        np.testing.assert_allclose(got.s2, ref[0].s2, rtol=1e-12)
        np.testing.assert_allclose(got.loglik, ref[0].loglik, rtol=1e-13)


def test_a_bad_row_in_a_grouped_task_names_its_own_block(tmp_path, X, monkeypatch):
    from dask_em.engine import _memory
    from dask_em.engine._errors import NonFiniteError

    bad = X.copy()
    bad[1234, 1] = np.nan
    path = _zarr(tmp_path / "x.zarr", bad, 100)
    x = load_data(DataConfig(source="zarr", path=str(path), chunk_rows=100))
    params = GaussianMixture(3, random_state=0).fit(X[:500])._params()
    monkeypatch.setattr(_memory, "_GROUPED_VALUE_BYTES", 1)
    with dask.config.set(scheduler="threads", num_workers=2):
        with pytest.raises(NonFiniteError, match="1234") as err:
            em_pass(x, [params])
    assert "12" in str(err.value)  # block 12 holds row 1234
