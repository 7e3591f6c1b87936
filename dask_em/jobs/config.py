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
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from dask_em._schema import FiniteFloat, NonNegFloat, NonNegInt, PosFloat, PosInt
from dask_em._schema import Model as _Model
from dask_em.data.sources import DataConfig, DataSource, untag_error
from dask_em.data.spec import SyntheticSpec
from dask_em.errors import JobError

__all__ = [
    "AdaptConfig",
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
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DIR = PROJECT_ROOT / "configs"

CovarianceType = Literal["full", "tied", "diag", "spherical"]
InitParams = Literal["kmeans", "k-means++", "random", "random_from_data"]


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


class AdaptConfig(_Model):
    """Adaptive scaling (``cluster.adapt``): Dask adds workers while tasks wait and
    retires idle ones (moving their data first), between ``minimum`` and ``maximum``.

    The fitted numbers do not depend on it: every pass reduces the same blocks in the
    same tree, wherever they run.
    """

    minimum: PosInt = 1
    """At least one worker stays, so the fit never waits for a cold start mid-pass."""
    maximum: PosInt
    interval: PosFloat = 1.0
    """Seconds between scaling decisions."""

    @model_validator(mode="after")
    def _ordered(self) -> AdaptConfig:
        if self.maximum < self.minimum:
            raise ValueError(f"maximum ({self.maximum}) is below minimum ({self.minimum})")
        return self


class JobqueueConfig(_Model):
    """An HPC cluster through dask-jobqueue (``pip install dask-em[jobqueue]``).

    ``cores``/``memory``/``processes`` are per batch job (``processes`` workers share its
    cores); ``jobs`` are submitted at the start. The scheduler runs in the job's process.
    """

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
    dashboard_address: str | None = None
    """Where the scheduler serves its dashboard (default: dask's, port 8787)."""

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
    """Seconds to wait for ``wait_for_workers`` at the start; also, once running, how long
    the job waits with no worker at all before it fails (keeping its checkpoint)."""
    adapt: AdaptConfig | None = None
    """Adaptive scaling of a local or jobqueue cluster (in workers)."""

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
        if self.adapt is not None and self.address is not None:
            raise ValueError(
                "'adapt' applies to local and jobqueue clusters; a scheduler at an "
                "'address' is scaled by whoever started it"
            )
        return self

    @property
    def kind(self) -> str:
        """``"local"``, ``"address"`` or ``"jobqueue"``."""
        for k in ("address", "jobqueue"):
            if getattr(self, k) is not None:
                return k
        return "local"


# ----------------------------------------------------------------------------------- model


# The settings only the Bayesian estimator has, and only the Gaussian one.
BAYESIAN_ONLY = (
    "weight_concentration_prior_type",
    "weight_concentration_prior",
    "mean_precision_prior",
    "mean_prior",
    "degrees_of_freedom_prior",
    "covariance_prior",
)
GAUSSIAN_ONLY = (
    "weights_init",
    "means_init",
    "precisions_init",
    "missing",
    "algorithm",
    "learning_decay",
    "learning_offset",
)


class ModelConfig(_Model):
    """Estimator parameters, passed to :class:`dask_em.GaussianMixture` (``kind:
    gaussian``) or :class:`dask_em.BayesianGaussianMixture` (``kind: bayesian``).

    Defaults are the estimator's, except ``random_state``: 0 (not None), so that a job file
    always means the same run.
    """

    kind: Literal["gaussian", "bayesian"] = "gaussian"
    """'bayesian': variational inference with a prior on the weights; superfluous
    components end with weights near zero."""
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
    algorithm: Literal["em", "accelerated", "online"] = "em"
    """'accelerated': the same optimum as 'em' in fewer passes (Newton on small data,
    else SQUAREM); 'online': one
    online-EM pass over the blocks, then 'accelerated'. ``max_iter`` counts passes."""
    learning_decay: Annotated[float, Field(gt=0.5, le=1.0)] = 0.7
    """Online EM's step-size decay ``kappa`` ('online')."""
    learning_offset: NonNegFloat = 1.0
    """Online EM's step-size offset ``t0`` ('online')."""
    weight_concentration_prior_type: Literal["dirichlet_process", "dirichlet_distribution"] = (
        "dirichlet_process"
    )
    """Bayesian: the prior on the weights."""
    weight_concentration_prior: PosFloat | None = None
    """Bayesian: default 1 / n_components; smaller favours fewer components."""
    mean_precision_prior: PosFloat | None = None
    mean_prior: list[FiniteFloat] | None = None
    degrees_of_freedom_prior: PosFloat | None = None
    covariance_prior: PosFloat | list[Any] | None = None
    """Bayesian: a float (spherical), a list (diag) or a list of lists (full, tied)."""
    weight_threshold: Annotated[FiniteFloat, Field(ge=0, lt=1)] = 0.01
    """Bayesian: components with a weight above this count as effective (run folder,
    ``dask-em info``); the others are marked pruned in the pictures."""

    @model_validator(mode="after")
    def _settings_of_the_kind(self) -> ModelConfig:
        other = GAUSSIAN_ONLY if self.kind == "bayesian" else BAYESIAN_ONLY
        defaults = ModelConfig.model_fields
        for key in other:
            if getattr(self, key) != defaults[key].default:
                raise ValueError(f"{key} is not a setting of kind: {self.kind}")
        return self

    def estimator_params(self) -> dict[str, Any]:
        """Keyword arguments for the estimator of ``kind`` (arrays as numpy)."""
        other = GAUSSIAN_ONLY if self.kind == "bayesian" else BAYESIAN_ONLY
        params = self.model_dump(exclude={"kind", "weight_threshold", *other})
        for key in ("weights_init", "means_init", "precisions_init", "mean_prior"):
            if params.get(key) is not None:
                params[key] = np.asarray(params[key], dtype=float)
        if isinstance(params.get("covariance_prior"), list):
            params["covariance_prior"] = np.asarray(params["covariance_prior"], dtype=float)
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


class StreamConfig(_Model):
    """Fit from files that keep arriving (``partial_fit``, online EM; optional).

    With this section the job does not read ``data.path`` as one data set: every file the
    glob matches is one batch, fitted by :meth:`dask_em.GaussianMixture.partial_fit` in
    the order the files settle (by name among files settling together), and the folder
    is watched for new matches until none arrives for ``idle_seconds`` or ``max_files``
    files are fitted. Writers should create a file under a name the glob does not match
    and rename it when complete; a file is also taken once its size and modification
    time have not changed for ``settle_seconds``.
    """

    poll_seconds: PosFloat = 1.0
    """How often the glob is listed."""
    settle_seconds: NonNegFloat = 2.0
    """A file is taken once unchanged (size, modification time) this long."""
    idle_seconds: NonNegFloat = 60.0
    """Stop after this long without a new file (0: fit the files there now, then stop)."""
    max_files: PosInt | None = None
    """Stop after fitting this many files."""


# ------------------------------------------------------------------------------------- job


class JobConfig(_Model):
    """A whole job: cluster, data, model (and optional model selection), output."""

    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str | None = None
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    data: DataSource
    model: ModelConfig = Field(default_factory=ModelConfig)
    selection: SelectionConfig | None = None
    output: OutputConfig = Field(default_factory=OutputConfig)
    stream: StreamConfig | None = None

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
        if self.stream is not None:
            from dask_em.jobs._stream import check_stream_job

            check_stream_job(self)
        if self.selection is not None and self.model.kind == "bayesian":
            raise ValueError(
                "model selection ranks Gaussian mixtures by BIC/AIC; a Bayesian mixture "
                "picks its components itself: remove the 'selection' section or use "
                "model.kind: gaussian"
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
    exc: ValidationError, job_file: Path | None, origins: dict[str, Path], data_at: int = 1
) -> list[JobError]:
    """One :class:`JobError` a pydantic error; the data section (at ``loc[data_at]``, or
    nowhere for None) reads as one model, without the source kind in the key."""
    problems = []
    for err in exc.errors(include_url=False):
        if data_at == 0 or (data_at == 1 and err["loc"][:1] == ("data",)):
            err = untag_error(err, data_at)
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
        elif err["type"] == "value_error" and "error" in err.get("ctx", {}):
            msg = validator_message(err)
        elif "input" in err and err["type"] not in ("model_type",):
            msg = f"{msg} (got {err['input']!r})"
        if loc and isinstance(loc[0], str) and loc[0] in origins:
            msg += f" [from preset {origins[loc[0]]}]"
        problems.append(JobError(msg, file=job_file, key=key))
    return problems


def validator_message(err: dict) -> str:
    """The message of one pydantic error (an item of ``ValidationError.errors()``): a
    validator's own words, without pydantic's "Value error, " in front."""
    if err["type"] == "value_error" and "error" in err.get("ctx", {}):
        return str(err["ctx"]["error"])
    return err["msg"]


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
    models: dict[str, Any] = {
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
        problems = _format_errors(exc, path, {}, data_at=0 if section == "data" else None)
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
