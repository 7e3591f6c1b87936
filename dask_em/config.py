"""Job configuration: typed, validated models loaded from YAML.

A job file is a mapping of sections::

    name: quickstart            # optional; default: the job file's stem
    cluster: {local: {n_workers: 2, threads_per_worker: 1, memory_limit: 2GiB}}
    data: {source: synthetic, synthetic: {n_samples: 30000, n_features: 2, n_components: 3}}
    model: {n_components: 3, covariance_type: full}
    output: {dir: runs/quickstart, plots: true}

Weighted rows name a column (parquet/csv) or a 1-D array file (npy/zarr; hdf5: a dataset)::

    data: {source: parquet, path: data/points.parquet, columns: [x, y], weights: count}

Presets
-------
Any of the sections ``cluster``, ``data``, ``model``, ``selection`` and ``output`` may name
a preset file instead of being written inline:

- ``cluster: laptop`` -- a bare name is looked up as ``configs/<section>/<name>.yaml`` in the
  project's ``configs/`` folder;
- ``cluster: ../configs/cluster/laptop.yaml`` -- a path (it contains ``/`` or ends in
  ``.yaml``/``.yml``) is resolved relative to the job file, then to the project root;
- ``model: {preset: small, n_components: 5}`` -- a preset plus keys that override it.

A preset file holds the section's content only (e.g. ``local: {n_workers: 2}`` for a cluster).

Paths inside a job (``data.path``, ``output.dir``, TLS files) are relative to the working
directory the command runs in, so ``dask-em run jobs/quickstart.yaml`` from the repository
root writes to ``runs/quickstart``.

Errors are raised as :class:`ConfigError`, whose problems print as
``FILE: key.path: message``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "ClusterConfig",
    "ConfigError",
    "DataConfig",
    "JobConfig",
    "JobError",
    "JobqueueConfig",
    "LocalClusterConfig",
    "ModelConfig",
    "OutputConfig",
    "SelectionConfig",
    "SyntheticSpec",
    "TLSConfig",
    "apply_overrides",
    "job_fingerprint",
    "load_job",
    "load_yaml",
    "preset_files",
    "validate_preset",
]

#: Sections that may name a preset file instead of being written inline.
PRESET_SECTIONS = ("cluster", "data", "model", "selection", "output")

#: The project's preset folder (``configs/`` next to the package in a source checkout).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = PROJECT_ROOT / "configs"

CovarianceType = Literal["full", "tied", "diag", "spherical"]
InitParams = Literal["kmeans", "k-means++", "random", "random_from_data"]
SourceKind = Literal["zarr", "npy", "hdf5", "parquet", "csv", "synthetic"]

# YAML already gives typed scalars, so integers and booleans are strict (``true`` is not 1,
# ``2.5`` is not 2); floats stay lax because PyYAML reads ``1e-3`` (no dot) as a string.
PosInt = Annotated[StrictInt, Field(ge=1)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class JobError(Exception):
    """Bad input from the user: printed as one line ``FILE: key.path: message``, exit 2.

    Parameters
    ----------
    message : str
        What is wrong and, where possible, what to do about it.
    file : str or Path, optional
        The file the problem is in (the job file, a data file, ...).
    key : str, optional
        Dotted path of the config key the problem is about, e.g. ``data.columns``.
    """

    def __init__(self, message: str, *, file: str | Path | None = None, key: str | None = None):
        # one line, whatever a wrapped library error looked like
        message = " ".join(str(message).split())
        super().__init__(message)
        self.message = message
        self.file = None if file is None else str(file)
        self.key = key

    def __str__(self) -> str:
        return ": ".join(p for p in (self.file, self.key, self.message) if p)

    def in_file(self, file: str | Path | None) -> JobError:
        """Attach ``file`` unless the error already names one; returns ``self``."""
        if self.file is None and file is not None:
            self.file = str(file)
        return self


class ConfigError(JobError):
    """One or more problems in a job configuration.

    ``str()`` gives the first problem (one line, plus how many more there are);
    :attr:`problems` lists them all.
    """

    def __init__(self, problems: Sequence[JobError]):
        self.problems = list(problems)
        first = self.problems[0]
        super().__init__(first.message, file=first.file, key=first.key)

    def __str__(self) -> str:
        line = str(self.problems[0])
        if len(self.problems) > 1:
            line += f" (and {len(self.problems) - 1} more; see `dask-em validate`)"
        return line

    def in_file(self, file: str | Path | None) -> ConfigError:
        for p in self.problems:
            p.in_file(file)
        return super().in_file(file)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _check_memory(value: Any) -> Any:
    """Accept ``auto``, a byte count or a size string like ``2GiB`` (dask's parser)."""
    from dask.utils import parse_bytes

    if value is None or value == "auto":
        return value
    if isinstance(value, bool):
        raise ValueError("expected a size like '2GiB', a number of bytes, or 'auto'")
    if isinstance(value, int | float):
        value = str(int(value))
    if not isinstance(value, str):
        raise ValueError("expected a size like '2GiB', a number of bytes, or 'auto'")
    try:
        if parse_bytes(value) <= 0:
            raise ValueError
    except (ValueError, TypeError):
        raise ValueError(f"cannot read {value!r} as a memory size; write e.g. '2GiB'") from None
    return value


# --------------------------------------------------------------------------------- cluster


class LocalClusterConfig(_Model):
    """An embedded ``distributed.LocalCluster`` on 127.0.0.1, started and closed by the job.

    ``None`` for ``n_workers``/``threads_per_worker`` lets dask size the cluster to the
    machine.
    """

    n_workers: PosInt | None = None
    threads_per_worker: PosInt | None = None
    memory_limit: str | None = "auto"
    processes: StrictBool = True
    dashboard_address: str | None = "127.0.0.1:8787"
    # dask's nannies set MALLOC_TRIM_THRESHOLD_=65536: freed memory over 64 KiB goes back
    # to the kernel at once, and fresh allocations page-fault on every use (the block
    # kernel once ran ~35% slower; its scratch now stays per thread). None runs the
    # workers without it (glibc's default); set a number to restore dask's behaviour.
    malloc_trim_threshold: NonNegInt | None = None

    _memory = field_validator("memory_limit", mode="before")(_check_memory)

    @field_validator("memory_limit")
    @classmethod
    def _enough_for_a_worker(cls, value: str | None) -> str | None:
        from dask.utils import format_bytes, parse_bytes

        # A worker holds ~400 MiB before any data (its libraries, numba and the compiled
        # kernels), and dask pauses a worker at 80% of its limit: with 512 MiB both
        # workers of the out-of-core job paused for good on the first pass.
        if value not in (None, "auto") and parse_bytes(value) < _MIN_WORKER_MEMORY:
            raise ValueError(
                f"{value} is too little for a worker, which needs about 400 MiB before "
                f"any data (dask pauses it at 80% of its limit); use at least "
                f"{format_bytes(_MIN_WORKER_MEMORY)}, 1GiB or more for out-of-core jobs"
            )
        return value


_MIN_WORKER_MEMORY = 768 * 2**20


class TLSConfig(_Model):
    """TLS to an existing scheduler (becomes ``distributed.security.Security``)."""

    ca_file: str
    cert: str | None = None
    key: str | None = None
    require_encryption: StrictBool = True

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both 'cert' and 'key' (the client certificate and its key)")
        return self


class JobqueueConfig(_Model):
    """An HPC cluster through dask-jobqueue (``pip install dask-em[jobqueue]``)."""

    kind: Literal["slurm", "pbs"]
    cores: PosInt
    memory: str
    processes: PosInt | None = None
    jobs: PosInt = 1
    queue: str | None = None
    account: str | None = None
    walltime: str | None = None
    interface: str | None = None
    job_extra_directives: list[str] = Field(default_factory=list)

    _memory = field_validator("memory", mode="before")(_check_memory)


class ClusterConfig(_Model):
    """Where the computation runs: one of ``local`` (default), ``address`` or ``jobqueue``."""

    local: LocalClusterConfig | None = None
    address: str | None = None
    jobqueue: JobqueueConfig | None = None
    tls: TLSConfig | None = None
    timeout: PosFloat = 10.0
    """Seconds to wait for the scheduler to answer."""
    wait_for_workers: NonNegInt = 1
    """Workers that must be connected before the fit starts (0: do not wait)."""
    workers_timeout: PosFloat = 60.0

    @model_validator(mode="after")
    def _one_target(self) -> ClusterConfig:
        chosen = [k for k in ("local", "address", "jobqueue") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one of local, address, jobqueue (got {', '.join(chosen)})")
        if not chosen:
            self.local = LocalClusterConfig()
        if self.address is not None:
            if "@" in self.address:
                # Never echo the address: the part before '@' may be a password.
                raise ValueError(
                    "the address contains credentials (user:password@); remove them: Dask "
                    "schedulers authenticate with TLS certificates (cluster.tls)"
                )
            if "://" not in self.address and ":" not in self.address:
                raise ValueError(f"address {self.address!r} should look like tcp://HOST:PORT")
            if self.tls is not None and not self.address.startswith("tls://"):
                raise ValueError("with 'tls' the address must start with tls://")
        elif self.tls is not None:
            raise ValueError("'tls' applies to a scheduler 'address' only")
        return self

    @property
    def kind(self) -> str:
        """``"local"``, ``"address"`` or ``"jobqueue"``."""
        for k in ("address", "jobqueue"):
            if getattr(self, k) is not None:
                return k
        return "local"


# ------------------------------------------------------------------------------------ data


class SyntheticSpec(_Model):
    """A seeded Gaussian mixture to draw data from.

    Either give the mixture explicitly (``means``, optionally ``weights`` and full
    ``covariances``) or let a generator make one from ``n_features``, ``n_components``,
    ``separation`` (minimum distance between means, in units of the largest component
    standard deviation) and ``seed``.
    """

    n_samples: PosInt
    n_features: PosInt | None = None
    n_components: PosInt | None = None
    separation: PosFloat = 4.0
    seed: NonNegInt = 0
    weights: list[FiniteFloat] | None = None
    means: list[list[FiniteFloat]] | None = None
    covariances: list[list[list[FiniteFloat]]] | None = None

    @model_validator(mode="after")
    def _shape(self) -> SyntheticSpec:
        if self.means is None:
            if self.weights is not None or self.covariances is not None:
                raise ValueError("'weights' and 'covariances' need 'means' too")
            if self.n_features is None or self.n_components is None:
                raise ValueError("give 'n_features' and 'n_components', or explicit 'means'")
            return self
        means = np.asarray(self.means, dtype=float)
        if means.ndim != 2 or means.size == 0:
            raise ValueError("'means' must be a non-empty list of equal-length rows")
        k, d = means.shape
        for name, value in (("n_components", self.n_components), ("n_features", self.n_features)):
            expected = k if name == "n_components" else d
            if value is not None and value != expected:
                raise ValueError(f"'{name}' is {value} but 'means' has shape {means.shape}")
        self.n_components, self.n_features = k, d
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=float)
            if w.shape != (k,) or np.any(w < 0) or not np.isclose(w.sum(), 1.0, atol=1e-6):
                raise ValueError(f"'weights' must be {k} non-negative numbers summing to 1")
        if self.covariances is not None:
            try:
                c = np.asarray(self.covariances, dtype=float)
            except ValueError:
                raise ValueError("'covariances' must be a list of square matrices") from None
            if c.shape != (k, d, d):
                raise ValueError(f"'covariances' must have shape ({k}, {d}, {d}), got {c.shape}")
            for i, ci in enumerate(c):
                if not np.allclose(ci, ci.T):
                    raise ValueError(f"covariance {i} is not symmetric")
                try:
                    np.linalg.cholesky(ci)
                except np.linalg.LinAlgError:
                    raise ValueError(f"covariance {i} is not positive definite") from None
        return self


class DataConfig(_Model):
    """Where the rows come from, and how they are chunked and typed."""

    source: SourceKind
    path: str | None = None
    """Local path or fsspec URL (zarr, parquet, csv); local path for npy and hdf5."""
    dataset: str | None = None
    """HDF5 dataset name, or the array's name inside a zarr group."""
    columns: list[str] | None = None
    """parquet/csv: columns to use (default: all, which must then all be numeric)."""
    chunk_rows: PosInt = 250_000
    dtype: Literal["float64", "float32"] = "float64"
    synthetic: SyntheticSpec | None = None
    """For ``source: synthetic`` the mixture to sample; for ``zarr`` the recipe used by
    ``dask-em make-data`` to create the file."""
    weights: str | None = None
    """Row weights (``fit(X, sample_weight=w)``): for parquet/csv a numeric column (not one
    of ``columns``; left out of the features when ``columns`` is omitted); for npy/zarr the
    path of a 1-D array file (``.npy`` or zarr), relative like ``path``; for hdf5 a dataset
    in the same file, or such a path. BIC/AIC then use n = the total weight."""

    @field_validator("weights")
    @classmethod
    def _weights_for_source(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return value
        src = info.data.get("source")
        if not value.strip():
            raise ValueError("is empty; omit it for unweighted rows")
        if src == "synthetic":
            raise ValueError(
                "does not apply to source 'synthetic' (its rows are unweighted draws); "
                "remove data.weights"
            )
        columns = info.data.get("columns")
        if src in ("parquet", "csv") and columns and value in columns:
            raise ValueError(
                f"column {value!r} is also listed in data.columns; a column "
                "cannot be both a feature and the weights"
            )
        return value

    @model_validator(mode="after")
    def _fields_for_source(self) -> DataConfig:
        src = self.source
        if src == "synthetic":
            if self.synthetic is None:
                raise ValueError("source 'synthetic' needs a 'synthetic' spec")
            if self.path is not None:
                raise ValueError("source 'synthetic' takes no 'path'")
        else:
            if self.path is None:
                raise ValueError(f"source {src!r} needs a 'path'")
            if self.synthetic is not None and src != "zarr":
                raise ValueError("'synthetic' applies to sources 'synthetic' and 'zarr' only")
        if self.columns is not None and src not in ("parquet", "csv"):
            raise ValueError(f"'columns' applies to parquet and csv, not {src!r}")
        if self.columns is not None and not self.columns:
            raise ValueError("'columns' is empty; omit it to use every column")
        if self.dataset is not None and src not in ("hdf5", "zarr"):
            raise ValueError(f"'dataset' applies to hdf5 and zarr, not {src!r}")
        if src == "hdf5" and self.dataset is None:
            raise ValueError("source 'hdf5' needs 'dataset' (the dataset's name in the file)")
        return self


# ----------------------------------------------------------------------------------- model


class ModelConfig(_Model):
    """Estimator parameters, passed to :class:`dask_em.GaussianMixture`.

    Defaults are the estimator's, except ``random_state``: 0 (not None), so that a job file
    always means the same run.
    """

    n_components: PosInt = 1
    covariance_type: CovarianceType = "full"
    tol: NonNegFloat = 1e-3
    reg_covar: NonNegFloat = 1e-6
    max_iter: PosInt = 100
    n_init: PosInt = 1
    init_params: InitParams = "kmeans"
    random_state: NonNegInt | None = 0
    weights_init: list[FiniteFloat] | None = None
    means_init: list[list[FiniteFloat]] | None = None
    precisions_init: list[Any] | None = None
    persist: Literal["auto", True, False] = "auto"
    missing: Literal["error", "em"] = "error"
    """'em': NaN are values missing at random, fitted by EM for incomplete data."""
    split_every: Annotated[StrictInt, Field(ge=2)] | None = None
    """Fan-in of the statistics' tree reduction (dask's ``split_every``)."""
    compute_dtype: Literal["auto", "float32", "float64"] = "auto"
    """E-step arithmetic: 'auto' is float32 for float32 data (``data.dtype``)."""

    def estimator_params(self) -> dict[str, Any]:
        """Keyword arguments for ``GaussianMixture`` (init arrays as numpy)."""
        params = self.model_dump()
        for key in ("weights_init", "means_init", "precisions_init"):
            if params[key] is not None:
                params[key] = np.asarray(params[key], dtype=float)
        return params


class SelectionConfig(_Model):
    """Fit one model per combination and keep the best by ``criterion`` (lower is better).

    Parameters not listed here come from the ``model`` section.
    """

    n_components: list[PosInt] = Field(min_length=1)
    covariance_type: list[CovarianceType] | None = None
    criterion: Literal["bic", "aic"] = "bic"

    @field_validator("n_components", "covariance_type")
    @classmethod
    def _unique(cls, value: list | None) -> list | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("values must be distinct")
        return value


# ---------------------------------------------------------------------------------- output


class OutputConfig(_Model):
    """What the run folder gets."""

    dir: str | None = None
    """Run folder; default ``runs/<job name>``."""
    labels: StrictBool = False
    """Write predicted labels (zarr) into the run folder."""
    probabilities: StrictBool = False
    """Write component probabilities (zarr) into the run folder."""
    plots: StrictBool = True
    plot_sample: PosInt = 5000
    """Rows drawn (at random, never the whole data) for the scatter plots."""
    checkpoint: StrictBool = True


# ------------------------------------------------------------------------------------- job


class JobConfig(_Model):
    """A whole job: cluster, data, model (and optional model selection), output."""

    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str | None = None
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    selection: SelectionConfig | None = None
    output: OutputConfig = Field(default_factory=OutputConfig)

    _source: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _selection_without_init(self) -> JobConfig:
        given = [
            k
            for k in ("weights_init", "means_init", "precisions_init")
            if getattr(self.model, k) is not None
        ]
        if self.selection is not None and given:
            raise ValueError(
                f"model selection varies n_components, so model.{given[0]} cannot be used "
                "with a 'selection' section"
            )
        return self

    @property
    def source(self) -> Path | None:
        """The job file this config was loaded from, if any."""
        return self._source

    @property
    def job_name(self) -> str:
        """``name``, else the job file's stem, else ``job``."""
        if self.name:
            return self.name
        return self._source.stem if self._source is not None else "job"

    @property
    def output_dir(self) -> Path:
        """The run folder (``output.dir`` or ``runs/<job name>``)."""
        return Path(self.output.dir) if self.output.dir else Path("runs") / self.job_name


def job_fingerprint(config: JobConfig) -> str:
    """Hash of everything that determines the fitted numbers (data, model, selection).

    Cluster and output settings are left out: a run may resume on another cluster.
    """
    payload = config.model_dump(mode="json", include={"data", "model", "selection"})
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- YAML + presets


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file with ``yaml.safe_load``; syntax errors name the line.

    Raises
    ------
    JobError
        The file is missing, unreadable or not valid YAML.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobError("file not found", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"cannot read file: {exc}", file=path) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        col = f" (column {mark.column + 1})" if mark is not None else ""
        raise JobError(f"YAML syntax error: {problem}{col}", file=path, key=where) from None


def _find_preset(section: str, ref: str, job_dir: Path) -> Path | None:
    is_path = "/" in ref or "\\" in ref or ref.endswith((".yaml", ".yml"))
    if is_path:
        candidates = [job_dir / ref, PROJECT_ROOT / ref, Path(ref)]
    else:
        candidates = [
            CONFIGS_DIR / section / f"{ref}.yaml",
            Path("configs") / section / f"{ref}.yaml",
        ]
    for c in candidates:
        if c.is_file():
            return c
    return None


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _resolve_presets(raw: dict, job_file: Path, origins: dict[str, Path]) -> None:
    job_dir = job_file.parent
    for section in PRESET_SECTIONS:
        value = raw.get(section)
        if isinstance(value, str):
            ref, overrides = value, {}
        elif isinstance(value, dict) and "preset" in value:
            overrides = dict(value)
            ref = overrides.pop("preset")
            if not isinstance(ref, str):
                raise JobError(
                    "must be a preset name or file path", file=job_file, key=f"{section}.preset"
                )
        else:
            continue
        found = _find_preset(section, ref, job_dir)
        if found is None:
            where = f"configs/{section}/{ref}.yaml" if "/" not in ref else ref
            raise JobError(
                f"preset {ref!r} not found (looked for {where})", file=job_file, key=section
            )
        content = load_yaml(found)
        if content is None:
            content = {}
        if not isinstance(content, dict):
            raise JobError(f"a {section} preset must be a mapping", file=found)
        if "preset" in content:
            raise JobError("presets cannot name other presets", file=found, key="preset")
        raw[section] = _deep_merge(content, overrides)
        origins[section] = found


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    """Apply ``key.path=value`` overrides (values parsed as YAML scalars/flow) to ``raw``.

    Raises
    ------
    JobError
        An override is not of the form ``key.path=value``.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise JobError(f"expected key.path=value, got {item!r}", file="--set")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: i + 1])
                raise JobError(
                    f"cannot set {key}: {prefix} is not a mapping", file="--set", key=key
                )
            node = child
        node[parts[-1]] = value
    return raw


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model class reached by following ``loc`` from ``model`` (or None)."""
    import typing

    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        # unwrap Optional[...] / X | None to the model inside
        args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
        current = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _format_errors(
    exc: ValidationError, job_file: Path | None, origins: dict[str, Path]
) -> list[JobError]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"]]
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc)
        key = key.replace(".[", "[") or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = _model_at(JobConfig, loc[:-1])
            allowed = sorted(parent.model_fields) if parent is not None else []
            msg = "unknown key"
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
            elif allowed:
                msg += f" (allowed: {', '.join(allowed)})"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif "input" in err and err["type"] not in ("model_type",):
            msg = f"{msg} (got {err['input']!r})"
        if loc and isinstance(loc[0], str) and loc[0] in origins:
            msg += f" [from preset {origins[loc[0]]}]"
        problems.append(JobError(msg, file=job_file, key=key))
    return problems


def load_job(
    path: str | Path,
    *,
    overrides: Iterable[str] = (),
    scheduler: str | None = None,
    output: str | Path | None = None,
) -> JobConfig:
    """Load, resolve presets, apply overrides and validate a job file.

    Parameters
    ----------
    path : str or Path
        The job's YAML file.
    overrides : iterable of str
        ``key.path=value`` settings applied after presets (the CLI's ``--set``).
    scheduler : str, optional
        Run on the scheduler at this address instead of the job's cluster (TLS, timeout
        and worker settings of the job's cluster section are kept).
    output : str or Path, optional
        Run folder replacing ``output.dir``.

    Returns
    -------
    JobConfig

    Raises
    ------
    ConfigError
        Every problem found, each naming the file and key.
    JobError
        The file or a preset is missing or not valid YAML.
    """
    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else f"a {type(raw).__name__}"
        raise JobError(
            f"a job file must be a mapping of sections (cluster, data, model, output), got {kind}",
            file=path,
        )
    origins: dict[str, Path] = {}
    _resolve_presets(raw, path, origins)
    overrides = list(overrides)
    if overrides:
        apply_overrides(raw, overrides)
        _resolve_presets(raw, path, origins)
    if scheduler is not None:
        old = raw.get("cluster") if isinstance(raw.get("cluster"), dict) else {}
        keep = ("tls", "timeout", "wait_for_workers", "workers_timeout")
        raw["cluster"] = {"address": scheduler, **{k: old[k] for k in keep if k in old}}
        origins.pop("cluster", None)
    if output is not None:
        if not isinstance(raw.get("output"), dict):
            raw["output"] = {}
        raw["output"]["dir"] = str(output)
    try:
        config = JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, path, origins)) from None
    config._source = path
    return config


def validate_preset(path: str | Path, section: str) -> None:
    """Validate a preset file as the content of ``section``.

    Raises
    ------
    ConfigError, JobError
    """
    path = Path(path)
    models: dict[str, type[BaseModel]] = {
        "cluster": ClusterConfig,
        "data": DataConfig,
        "model": ModelConfig,
        "selection": SelectionConfig,
        "output": OutputConfig,
    }
    if section not in models:
        raise JobError(f"unknown preset section {section!r}", file=path)
    raw = load_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise JobError(f"a {section} preset must be a mapping", file=path)
    try:
        models[section].model_validate(raw)
    except ValidationError as exc:
        problems = _format_errors(exc, path, {})
        for p in problems:
            p.key = f"{section}.{p.key}"
        raise ConfigError(problems) from None


def preset_files(configs_dir: str | Path = CONFIGS_DIR) -> list[tuple[str, Path]]:
    """``(section, path)`` for every preset file under ``configs_dir/<section>/``."""
    out = []
    for section in PRESET_SECTIONS:
        folder = Path(configs_dir) / section
        if folder.is_dir():
            out += [(section, p) for p in sorted(folder.glob("*.y*ml"))]
    return out
