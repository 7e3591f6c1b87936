"""What every data source shares: its config fields, their checks, and the loading steps.

A source kind is one subclass of :class:`Source` with its ``source`` tag as a ``Literal``,
the file suffixes that mean it, the optional keys it takes, and its reading
(:meth:`Source.read`); :mod:`dask_em.data.sources` combines the subclasses into one
discriminated union on ``source``.

Every kind has the same keys (those it does not take must stay unset), so a config dumps
to the same mapping, and a job to the same fingerprint, whatever its kind.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import field_validator, model_validator

from dask_em._schema import Model, PosInt
from dask_em.data.spec import SyntheticSpec
from dask_em.errors import JobError

__all__ = ["Source"]


def is_url(path: str) -> bool:
    return "://" in path


# Option names that carry a credential (s3fs ``key``/``secret``/``token``, gcsfs ``token``,
# adlfs ``account_key``/``sas_token``, botocore ``aws_secret_access_key``, ...). A job file
# is copied into model.json and logs, so these come from the environment or profile
# files instead; ``profile`` (a profile's *name*) is fine.
_SECRET_OPTION = re.compile(r"key|secret|token|password|passwd|credential|signature", re.I)


def _secret_options(options: Any, at: str = "") -> list[str]:
    """Dotted names of every option in ``options`` (nested mappings too) that would hold
    a credential."""
    found = []
    if isinstance(options, dict):
        for name, value in options.items():
            where = f"{at}.{name}" if at else str(name)
            if _SECRET_OPTION.search(str(name)):
                found.append(where)
            found += _secret_options(value, where)
    return found


class Source(Model):
    """Where the rows come from, and how they are chunked and typed."""

    source: str
    path: str | None = None
    """Local path or fsspec URL (zarr, parquet, csv); local path for npy and hdf5."""
    dataset: str | None = None
    """HDF5 dataset name, or the array's name inside a zarr group."""
    columns: list[str] | None = None
    """parquet/csv: columns to use (default: all, which must then all be numeric)."""
    chunk_rows: PosInt = 250_000
    """Rows per block. Left out of a job, ``dask-em run`` sizes the blocks for the
    cluster's threads and the data (scheduling under 5% of a pass); 250,000 elsewhere."""
    dtype: Literal["float64", "float32"] = "float64"
    synthetic: SyntheticSpec | None = None
    """For ``source: synthetic`` the mixture to sample; for ``zarr`` the recipe used by
    ``dask-em make-data`` to create the file."""
    weights: str | None = None
    """Row weights (``fit(X, sample_weight=w)``): for parquet/csv a numeric column (not one
    of ``columns``; left out of the features when ``columns`` is omitted); for npy/zarr the
    path of a 1-D array file (``.npy`` or zarr), relative like ``path``; for hdf5 a dataset
    in the same file, or such a path. BIC/AIC then use n = the total weight."""
    storage_options: dict[str, Any] | None = None
    """For an fsspec URL (``s3://``, ``gs://``, ``https://`` ...; zarr, parquet, csv): the
    file system's options, e.g. ``{endpoint_url: ..., region_name: ...}`` (fsspec's
    ``storage_options``). Never credentials: they come from the environment or the usual
    profile files (``AWS_ACCESS_KEY_ID``, ``~/.aws/credentials`` with ``profile: NAME``)."""

    suffixes: ClassVar[tuple[str, ...]] = ()
    """File suffixes that mean this kind (the first is the usual one)."""
    takes: ClassVar[frozenset[str]] = frozenset()
    """Which of the optional keys ``dataset``, ``columns`` and ``synthetic`` it takes."""

    # ------------------------------------------------------------------------ validation

    @field_validator("weights")
    @classmethod
    def _weights_given(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("is empty; omit it for unweighted rows")
        cls._check_weights(value, info.data)
        return value

    @classmethod
    def _check_weights(cls, value: str, fields: dict[str, Any]) -> None:
        """Raise ValueError where ``data.weights`` cannot name ``value`` for this kind
        (``fields``: the keys validated before it)."""

    @field_validator("path")
    @classmethod
    def _no_password_in_url(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        if value is not None and is_url(value) and urlsplit(value).password is not None:
            # never echo the URL: the part before '@' is a password
            raise ValueError(
                "the URL contains credentials (user:password@); remove them and set them "
                "in the environment or a profile file"
            )
        return value

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        secret = _secret_options(value)
        if secret:
            # name the options, never their values
            raise ValueError(
                f"{', '.join(secret)} would put a credential in the job file (and so in "
                "model.json and the logs); set it in the environment (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY, ...) or a profile file and give "
                "storage_options.profile instead"
            )
        return value

    @model_validator(mode="after")
    def _fields_for_source(self) -> Source:
        self._check_fields()
        return self

    def _check_fields(self) -> None:
        """Raise ValueError for a missing key, or one this kind does not take."""
        if self.path is None:
            raise ValueError(f"source {self.source!r} needs a 'path'")
        self._check_unused()

    def _check_unused(self) -> None:
        src = self.source
        if self.synthetic is not None and "synthetic" not in self.takes:
            raise ValueError("'synthetic' applies to sources 'synthetic' and 'zarr' only")
        if self.columns is not None and "columns" not in self.takes:
            raise ValueError(f"'columns' applies to parquet and csv, not {src!r}")
        if self.columns is not None and not self.columns:
            raise ValueError("'columns' is empty; omit it to use every column")
        if self.dataset is not None and "dataset" not in self.takes:
            raise ValueError(f"'dataset' applies to hdf5 and zarr, not {src!r}")
        if self.storage_options is not None and "storage_options" not in self.takes:
            raise ValueError(f"'storage_options' applies to zarr, parquet and csv, not {src!r}")

    # --------------------------------------------------------------------------- reading

    def read(self):
        """The rows as a lazy dask array, as the file holds them (no checks, no cast)."""
        raise NotImplementedError  # pragma: no cover - every kind implements it

    def load(self):
        """The rows as a lazy 2-D dask array, chunked by ``chunk_rows`` with all columns
        in one block, cast to ``dtype`` (see :func:`dask_em.data.load_data`)."""
        x = check_numeric_array(self.read(), self.path)
        if x.shape[0] == 0:
            raise JobError(f"{self.path} has no rows", key="data.path")
        if x.shape[1] == 0:
            raise JobError(f"{self.path} has no columns (features)", key="data.path")
        if x.chunks[1] != (x.shape[1],) or max(x.chunks[0]) > self.chunk_rows:
            x = x.rechunk((self.chunk_rows, x.shape[1]))
        return x.astype(self.dtype, copy=False)

    def read_weights(self):
        """The lazy 1-D weights array ``data.weights`` names (set), unchecked length."""
        raise NotImplementedError  # pragma: no cover - every weighted kind implements it

    def load_weighted(self):
        """``(x, w)`` for a source with ``weights`` set (see
        :func:`dask_em.data.load_weighted`)."""
        x = self.load()
        w = self.read_weights()
        self._check_weights_length(w, x.shape[0])
        return x, w.astype(np.float64, copy=False)

    def check(self) -> tuple:
        """The shape, from opening the source without reading the rows."""
        x = check_numeric_array(self.read(), self.path)
        if self.weights is not None:
            self._check_weights_length(self.read_weights(), x.shape[0])
        return x.shape

    def _check_weights_length(self, w, n_rows: int) -> None:
        if w.shape[0] != n_rows:
            raise JobError(
                f"the weights have {w.shape[0]} rows but the data has {n_rows} "
                f"({self.weights} vs {self.path})",
                key="data.weights",
            )

    # ----------------------------------------------------------------------------- files

    def input_files(self) -> list[tuple[str, str | None]]:
        """The files it reads, labelled for messages: ``[("data", path), ...]``."""
        return [("data", self.path)] + [("weights", w) for w in self.weights_files()]

    def weights_files(self) -> list[str]:
        """The file ``weights`` names, if it names one (not a column)."""
        return [] if self.weights is None else [self.weights]

    def fingerprint_files(self) -> list[Path]:
        """The local files whose size and time stand for the data in its fingerprint (a
        folder, such as a zarr store: its top-level entries)."""
        import glob
        import os

        if not self.path or is_url(self.path):
            return []
        files = _entries(Path(self.path).expanduser())
        if glob.has_magic(self.path):
            files = sorted(Path(f) for f in glob.glob(os.path.expanduser(self.path)))
        for w in self.weights_files():
            files += _entries(Path(w).expanduser())
        return files


def redact(text: str) -> str:
    """``text`` without the values of credential environment variables (a library's
    error may quote a request it signed)."""
    import os

    for name, value in os.environ.items():
        if value and len(value) >= 4 and _SECRET_OPTION.search(name):
            text = text.replace(value, "***")
    return text


def storage_error(exc: BaseException, path: str, what: str, key: str = "data.path") -> JobError:
    """A one-line :class:`JobError` for a failure to open or read ``path`` (``what``: the
    format tried), saying whether the object is missing, the credentials are, or access
    was refused. Credential values never appear in it (:func:`redact`)."""
    name = type(exc).__name__
    text = redact(" ".join(str(exc).split()))
    if name in ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError"):
        message = (
            f"no credentials to read {path}: set them in the environment (e.g. "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) or a profile file "
            "(data.storage_options.profile)"
        )
    elif isinstance(exc, PermissionError):
        message = f"access to {path} was refused ({text}); check the credentials and the bucket"
    elif isinstance(exc, FileNotFoundError) or name in ("NoSuchBucket", "NoSuchKey"):
        message = f"not found: {path} ({text}); check the bucket and the path"
    elif isinstance(exc, ImportError):
        message = f"cannot open {path}: {text}"
    else:
        message = f"cannot read {path} as {what} ({name}: {text})"
    return JobError(message, key=key)


def _entries(p: Path) -> list[Path]:
    # a folder (zarr store): its top-level entries; a full listing could be huge
    return [p] if p.is_file() else sorted(p.iterdir()) if p.is_dir() else []


def check_numeric_array(x, path: str):
    """``x`` if it holds numbers in 2-D, else a :class:`JobError` on ``data.path``."""
    if x.dtype.kind not in "biuf":
        raise JobError(
            f"{path} holds dtype {x.dtype}; only numeric (int, float, bool) data can be fitted",
            key="data.path",
        )
    if x.ndim != 2:
        raise JobError(_not_2d(path, x.shape), key="data.path")
    return x


def _not_2d(path: str, shape: tuple) -> str:
    """What to say of an array that is not rows x features (never guessed: a 1-D array
    may be one feature or one row, a 3-D one images or a time series)."""
    if len(shape) == 1:
        how = "for one feature, save it as x.reshape(-1, 1); for one row, x.reshape(1, -1)"
    elif len(shape) == 0:
        how = "a single number is not a data set"
    else:
        how = "to use each row's values as features, save x.reshape(x.shape[0], -1)"
    return (
        f"{path} holds a {len(shape)}-D array of shape {tuple(shape)}; the data must be 2-D "
        f"(rows x features): {how}"
    )
