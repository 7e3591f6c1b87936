"""Data sources and atomic writers."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from dask_em.io import (
    RunFolder,
    atomic_savez,
    atomic_write_bytes,
    atomic_write_json,
    check_data,
    data_summary,
    load_data,
    load_npz,
    synthetic_array,
    synthetic_mixture,
    write_zarr,
)
from dask_em.jobs.config import DataConfig, JobError, SyntheticSpec

N, D = 1000, 3


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).standard_normal((N, D))


@pytest.fixture()
def files(tmp_path, X):
    import dask.array as da
    import h5py
    import zarr

    np.save(tmp_path / "x.npy", X)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["group/x"] = X
        f["other"] = np.zeros(3)
    write_zarr(da.from_array(X, chunks=(400, D)), tmp_path / "x.zarr")
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("x", shape=X.shape, dtype=X.dtype, chunks=(300, D))[:] = X
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    df["name"] = [f"row{i}" for i in range(N)]
    df.to_parquet(tmp_path / "x.parquet")
    df.to_csv(tmp_path / "x.csv", index=False)
    return tmp_path


def cfg(**kw):
    kw.setdefault("chunk_rows", 300)
    return DataConfig(**kw)


@pytest.mark.parametrize(
    "source,name,extra",
    [
        ("npy", "x.npy", {}),
        ("hdf5", "x.h5", {"dataset": "group/x"}),
        ("zarr", "x.zarr", {}),
        ("zarr", "g.zarr", {"dataset": "x"}),
        ("zarr", "g.zarr", {}),  # a group with one array needs no name
        ("parquet", "x.parquet", {"columns": ["a", "b", "c"]}),
        ("csv", "x.csv", {"columns": ["a", "b", "c"]}),
    ],
)
def test_sources_read_the_file(files, X, source, name, extra):
    x = load_data(cfg(source=source, path=str(files / name), **extra))
    assert x.shape == (N, D)
    assert x.chunks == ((300, 300, 300, 100), (D,))
    assert x.dtype == np.float64
    np.testing.assert_allclose(x.compute(), X, rtol=1e-15 if source != "csv" else 1e-12)
    assert check_data(cfg(source=source, path=str(files / name), **extra))[1] == D


def test_column_subset_and_float32(files, X):
    x = load_data(
        cfg(source="parquet", path=str(files / "x.parquet"), columns=["c", "a"], dtype="float32")
    )
    assert x.dtype == np.float32
    np.testing.assert_allclose(x.compute(), X[:, [2, 0]].astype(np.float32))


def test_file_sources_do_not_embed_data_in_the_graph(files):
    import pickle

    x = load_data(cfg(source="npy", path=str(files / "x.npy")))
    # the graph carries the path, not the 24 kB of numbers
    assert len(pickle.dumps(dict(x.__dask_graph__()))) < 8000


@pytest.mark.parametrize(
    "kw,key,words",
    [
        ({"source": "npy", "path": "nope.npy"}, "data.path", ["nope.npy", "not found"]),
        ({"source": "zarr", "path": "nope.zarr"}, "data.path", ["nope.zarr"]),
        ({"source": "csv", "path": "nope.csv"}, "data.path", ["nope.csv"]),
        ({"source": "parquet", "path": "x.parquet"}, "data.columns", ["'name'", "non-numeric"]),
        ({"source": "csv", "path": "x.csv", "columns": ["a", "zz"]}, "data.columns", ["'zz'"]),
        ({"source": "csv", "path": "x.csv", "columns": ["a", "name"]}, "data.columns", ["'name'"]),
        ({"source": "hdf5", "path": "x.h5", "dataset": "x"}, "data.dataset", ["group/x"]),
        ({"source": "zarr", "path": "g.zarr", "dataset": "y"}, "data.dataset", ["'y'"]),
    ],
)
def test_bad_data_names_the_problem(files, monkeypatch, kw, key, words):
    monkeypatch.chdir(files)
    with pytest.raises(JobError) as info:
        load_data(cfg(**kw))
    assert info.value.key == key
    for w in words:
        assert w in str(info.value)
    with pytest.raises(JobError):
        check_data(cfg(**kw))


def test_ragged_csv(tmp_path):
    (tmp_path / "r.csv").write_text("a,b\n1,2\n3,4,5\n6,7\n")
    with pytest.raises(JobError) as info:
        load_data(cfg(source="csv", path=str(tmp_path / "r.csv")))
    assert info.value.key == "data.path" and "r.csv" in str(info.value)
    assert "\n" not in str(info.value)


def test_corrupt_and_wrong_kind_files(files):
    (files / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(JobError, match="bad.npy"):
        load_data(cfg(source="npy", path=str(files / "bad.npy")))
    np.save(files / "s.npy", np.array(["a", "b"]))
    with pytest.raises(JobError, match="numeric"):
        load_data(cfg(source="npy", path=str(files / "s.npy")))
    np.save(files / "one.npy", np.arange(5.0))  # 1-D: one feature or one row? not guessed
    with pytest.raises(JobError, match=r"shape \(5,\).*x\.reshape\(-1, 1\)"):
        load_data(cfg(source="npy", path=str(files / "one.npy")))


SPEC = SyntheticSpec(n_samples=2500, n_features=2, n_components=3, seed=5)


def test_synthetic_is_deterministic_per_chunk():
    a = synthetic_array(SPEC, 1000).compute()
    b = synthetic_array(SPEC, 1000).compute()
    np.testing.assert_array_equal(a, b)
    assert synthetic_array(SPEC, 1000).name == synthetic_array(SPEC, 1000).name
    other = SPEC.model_copy(update={"seed": 6})
    assert not np.array_equal(a, synthetic_array(other, 1000).compute())
    # a block depends on (seed, block index) only: a longer data set extends the shorter
    longer = SPEC.model_copy(update={"n_samples": 4000})
    np.testing.assert_array_equal(synthetic_array(longer, 1000)[:2000].compute(), a[:2000])


def test_synthetic_matches_its_mixture():
    spec = SyntheticSpec(
        n_samples=60_000,
        means=[[0, 0], [10, 10]],
        weights=[0.25, 0.75],
        covariances=[[[1, 0.5], [0.5, 1]], [[2, 0], [0, 0.5]]],
        seed=1,
    )
    x = load_data(DataConfig(source="synthetic", synthetic=spec, chunk_rows=20_000)).compute()
    near = x.sum(axis=1) < 10  # 5.8 and 6.3 standard deviations from the two means
    assert near.mean() == pytest.approx(0.25, abs=0.01)
    np.testing.assert_allclose(np.cov(x[near].T), [[1, 0.5], [0.5, 1]], atol=0.05)
    np.testing.assert_allclose(x[~near].mean(axis=0), [10, 10], atol=0.03)


def test_synthetic_generator_respects_separation():
    w, m, c = synthetic_mixture(
        SyntheticSpec(n_samples=1, n_features=3, n_components=6, separation=5, seed=2)
    )
    assert w.sum() == pytest.approx(1) and c.shape == (6, 3, 3)
    dist = np.linalg.norm(m[:, None] - m[None], axis=-1) + np.eye(6) * 1e9
    assert dist.min() >= 5
    assert np.all(np.linalg.eigvalsh(c) <= 1.0 + 1e-12)


def test_write_zarr_roundtrip_and_refuses_existing(tmp_path):
    x = synthetic_array(SPEC, 1000)
    path = write_zarr(x, tmp_path / "s.zarr")
    back = load_data(DataConfig(source="zarr", path=str(path), chunk_rows=1000))
    np.testing.assert_array_equal(back.compute(), x.compute())
    with pytest.raises(JobError, match="exists"):
        write_zarr(x, path)
    write_zarr(x[:10], path, overwrite=True)
    assert load_data(DataConfig(source="zarr", path=str(path))).shape == (10, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_data_summary_fingerprint(files):
    c = cfg(source="npy", path=str(files / "x.npy"))
    s1 = data_summary(c, load_data(c))
    assert s1["shape"] == [N, D] and s1["fingerprint"].startswith("sha256:")
    assert data_summary(c, load_data(c))["fingerprint"] == s1["fingerprint"]
    np.save(files / "x.npy", np.zeros((N, D)))
    assert data_summary(c, load_data(c))["fingerprint"] != s1["fingerprint"]


# ------------------------------------------------------------------------------ writers


def test_atomic_writes_leave_no_temp_files(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"123")
    atomic_write_json(tmp_path / "m.json", {"x": np.float64(1.5), "a": np.arange(2)})
    atomic_savez(tmp_path / "m.npz", {"w": np.ones(3), "s": np.asarray("full")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "m.json", "m.npz"]
    arrays = load_npz(tmp_path / "m.npz")
    assert str(arrays["s"]) == "full" and arrays["w"].sum() == 3
    assert (tmp_path / "m.json").read_text().strip().startswith("{")


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"v": 1})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_json(target, {"v": 2})
    monkeypatch.undo()
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(ValueError, match="object"):
        atomic_savez(tmp_path / "o.npz", {"o": np.array([{"a": 1}], dtype=object)})
    np.savez(tmp_path / "evil.npz", o=np.array([{"a": 1}], dtype=object))
    with pytest.raises(JobError, match="object arrays"):
        load_npz(tmp_path / "evil.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(JobError, match="junk.npz"):
        load_npz(tmp_path / "junk.npz")


def test_run_folder(tmp_path):
    target = tmp_path / "run"
    folder = RunFolder(target)
    staging = folder.prepare()
    (staging / "model.json").write_text("{}")
    atomic_savez(folder.checkpoint, {"a": np.ones(1)})
    assert not target.exists()
    folder.commit()
    assert (target / "model.json").exists() and not (target / "checkpoint.npz").exists()
    assert not staging.exists()
    with pytest.raises(JobError) as info:
        RunFolder(target).prepare()
    assert info.value.key == "output.dir" and "--overwrite" in str(info.value)
    with pytest.raises(JobError, match="nothing to resume"):
        RunFolder(tmp_path / "other", resume=True).prepare()
    again = RunFolder(target, overwrite=True)
    (again.prepare() / "new.txt").write_text("x")
    assert (target / "model.json").exists()  # the old run stays until commit
    again.commit()
    assert sorted(p.name for p in target.iterdir()) == [".dask-em.json", "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
