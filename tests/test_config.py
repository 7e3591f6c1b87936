"""Job configuration: shipped files validate, presets, overrides, and error messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dask_em.jobs.config import (
    CONFIGS_DIR,
    PROJECT_ROOT,
    ConfigError,
    JobConfig,
    JobError,
    job_fingerprint,
    load_job,
    preset_files,
    validate_preset,
)

JOB_FILES = sorted((PROJECT_ROOT / "jobs").glob("*.yaml"))
PRESETS = preset_files()


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """
data:
  source: synthetic
  synthetic: {n_samples: 100, n_features: 2, n_components: 2}
"""


def test_shipped_files_exist():
    assert {p.name for p in JOB_FILES} >= {
        "quickstart.yaml",
        "out_of_core.yaml",
        "model_selection.yaml",
        "remote_cluster.yaml",
    }
    assert {p.name for _, p in PRESETS} >= {"laptop.yaml", "remote.yaml"}


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_job_validates(path):
    config = load_job(path)
    assert isinstance(config, JobConfig)
    # shipped jobs write under runs/ (gitignored) and name no absolute machine paths
    assert not Path(config.output_dir).is_absolute()
    assert config.output_dir.parts[0] == "runs"
    assert "/home/" not in path.read_text() and "/work/" not in path.read_text()


@pytest.mark.parametrize("section,path", PRESETS, ids=lambda p: getattr(p, "name", p))
def test_every_preset_validates(section, path):
    validate_preset(path, section)


def test_every_configs_file_is_a_known_preset():
    files = {p for p in CONFIGS_DIR.rglob("*") if p.is_file()}
    assert files == {p for _, p in PRESETS}


def test_defaults(tmp_path):
    config = load_job(write(tmp_path, MINIMAL))
    assert config.cluster.kind == "local"
    assert config.cluster.local.memory_limit == "auto"
    assert config.model.init_params == "kmeans"
    assert config.model.random_state == 0
    assert config.output_dir == Path("runs/job")
    assert config.source == tmp_path / "job.yaml"


def test_preset_by_name_path_and_with_overrides(tmp_path):
    by_name = load_job(write(tmp_path, MINIMAL + "cluster: laptop\n"))
    assert by_name.cluster.local.n_workers == 2
    rel = Path("..") / CONFIGS_DIR.relative_to(PROJECT_ROOT) / "cluster" / "laptop.yaml"
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    (tmp_path / "configs" / "cluster").mkdir(parents=True)
    (tmp_path / "configs" / "cluster" / "laptop.yaml").write_text("local: {n_workers: 5}\n")
    by_path = load_job(write(jobs_dir, MINIMAL + f"cluster: {rel.as_posix()}\n"))
    assert by_path.cluster.local.n_workers == 5  # relative to the job file first
    merged = load_job(write(tmp_path, MINIMAL + "model: {preset: robust, n_components: 5}\n"))
    assert merged.model.n_components == 5 and merged.model.n_init == 4


def test_missing_preset(tmp_path):
    with pytest.raises(JobError) as info:
        load_job(write(tmp_path, MINIMAL + "cluster: nonesuch\n"))
    assert "cluster" in str(info.value) and "nonesuch" in str(info.value)


def test_error_in_preset_names_the_preset(tmp_path):
    (tmp_path / "bad.yaml").write_text("local: {n_workers: lots}\n")
    with pytest.raises(ConfigError) as info:
        load_job(write(tmp_path, MINIMAL + "cluster: ./bad.yaml\n"))
    msg = str(info.value)
    assert "cluster.local.n_workers" in msg and "bad.yaml" in msg


def test_overrides_scheduler_and_output(tmp_path):
    path = write(tmp_path, MINIMAL + "cluster: {local: {n_workers: 1}, timeout: 3}\n")
    config = load_job(
        path,
        overrides=["model.n_components=4", "model.tol=1e-5", "output.labels=true"],
        scheduler="tcp://127.0.0.1:9999",
        output=tmp_path / "out",
    )
    assert config.model.n_components == 4
    assert config.model.tol == pytest.approx(1e-5)
    assert config.output.labels is True
    assert config.cluster.kind == "address" and config.cluster.timeout == 3
    assert config.output_dir == tmp_path / "out"
    with pytest.raises(JobError, match="key.path=value"):
        load_job(path, overrides=["model.n_components"])


def test_fingerprint_ignores_cluster_and_output(tmp_path):
    path = write(tmp_path, MINIMAL)
    a = job_fingerprint(load_job(path))
    assert a == job_fingerprint(load_job(path, overrides=["cluster.local.n_workers=3"]))
    assert a == job_fingerprint(load_job(path, output="elsewhere"))
    assert a != job_fingerprint(load_job(path, overrides=["model.tol=0.5"]))
    assert a != job_fingerprint(load_job(path, overrides=["data.chunk_rows=7"]))


BAD = {
    "yaml_syntax": ("data:\n  source: npy\n  path: [x\n", "line"),
    "not_a_mapping": ("- 1\n- 2\n", "mapping"),
    "unknown_key": (MINIMAL + "model: {n_component: 3}\n", "model.n_component"),
    "unknown_section": (MINIMAL + "modle: {}\n", "modle"),
    "wrong_type": (MINIMAL + "model: {n_components: three}\n", "model.n_components"),
    "bool_as_int": (MINIMAL + "model: {max_iter: true}\n", "model.max_iter"),
    "negative_tol": (MINIMAL + "model: {tol: -1}\n", "model.tol"),
    "bad_covariance": (MINIMAL + "model: {covariance_type: fool}\n", "model.covariance_type"),
    "missing_data": ("model: {n_components: 2}\n", "data"),
    "missing_path": ("data: {source: npy}\n", "data"),
    "bad_source": ("data: {source: excel, path: x.xls}\n", "data.source"),
    "two_clusters": (MINIMAL + "cluster: {local: {}, address: tcp://127.0.0.1:1}\n", "cluster"),
    "tls_needs_tls_scheme": (
        MINIMAL + "cluster: {address: tcp://h:1, tls: {ca_file: ca.pem}}\n",
        "cluster",
    ),
    "memory": (MINIMAL + "cluster: {local: {memory_limit: lots}}\n", "memory_limit"),
    # A worker pauses at 80% and holds ~400 MiB before any data: it would stall.
    "memory_too_small": (
        MINIMAL + "cluster: {local: {memory_limit: 512MiB}}\n",
        "cluster.local.memory_limit: 512MiB is too little for a worker",
    ),
    "jobqueue_kind": (
        MINIMAL + "cluster: {jobqueue: {kind: my.module.Cluster, cores: 1, memory: 1GiB}}\n",
        "cluster.jobqueue.kind",
    ),
    "columns_for_npy": ("data: {source: npy, path: x.npy, columns: [a]}\n", "data"),
    "synthetic_not_pd": (
        "data: {source: synthetic, synthetic: {n_samples: 10, means: [[0, 0]], "
        "covariances: [[[1, 2], [2, 1]]]}}\n",
        "positive definite",
    ),
    "selection_duplicates": (
        MINIMAL + "selection: {n_components: [2, 2]}\n",
        "selection.n_components",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_names_the_key(tmp_path, case):
    text, expected = BAD[case]
    path = write(tmp_path, text)
    with pytest.raises(JobError) as info:
        load_job(path)
    line = str(info.value)
    assert line.startswith(str(path) + ": ")
    assert expected in line
    assert "\n" not in line


def test_yaml_error_reports_line_number(tmp_path):
    path = write(tmp_path, "name: x\ndata:\n  source: npy\n  path: [x\n")
    with pytest.raises(JobError) as info:
        load_job(path)
    assert "line " in str(info.value)
    assert info.value.key.startswith("line ")


def test_unknown_key_suggests(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_job(write(tmp_path, MINIMAL + "model: {n_component: 3}\n"))
    assert "did you mean 'n_components'" in str(info.value)


def test_all_problems_are_listed(tmp_path):
    text = MINIMAL + "model: {n_components: 0, tol: x}\noutput: {plots: maybe}\n"
    with pytest.raises(ConfigError) as info:
        load_job(write(tmp_path, text))
    keys = {p.key for p in info.value.problems}
    assert keys == {"model.n_components", "model.tol", "output.plots"}
    assert "and 2 more" in str(info.value)


def test_missing_job_file(tmp_path):
    with pytest.raises(JobError) as info:
        load_job(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value) and "not found" in str(info.value)


def test_yaml_tags_are_not_executed(tmp_path):
    # safe_load refuses Python object tags outright
    text = "data: !!python/object/apply:os.system ['echo hacked']\n"
    with pytest.raises(JobError, match="YAML"):
        load_job(write(tmp_path, text))


def test_estimator_params_match_the_estimator():
    from dask_em import GaussianMixture

    config = JobConfig.model_validate({"data": {"source": "npy", "path": "x.npy"}})
    params = config.model.estimator_params()
    assert set(params) <= set(GaussianMixture().get_params())
    defaults = GaussianMixture().get_params()
    # same defaults as the estimator, except a fixed seed
    assert {k: v for k, v in params.items() if k != "random_state"} == {
        k: defaults[k] for k in params if k != "random_state"
    }
