"""Tables: parquet and CSV files (or globs, or URLs) read with dask.dataframe.

A CSV's rows are checked to have as many fields as its header: pandas would fill a
short row with NaN, which would pass for missing values.
"""

from __future__ import annotations

import csv
import glob
import io as _io
import os
import re
from pathlib import Path
from typing import ClassVar, Literal

import dask
import numpy as np

from dask_em.data.base import Source, is_url, storage_error
from dask_em.errors import JobError

__all__ = ["CsvSource", "ParquetSource"]


class _TableSource(Source):
    """A table's numeric columns; weights are one of its columns."""

    takes: ClassVar[frozenset[str]] = frozenset({"columns", "storage_options"})

    @classmethod
    def _check_weights(cls, value: str, fields: dict) -> None:
        columns = fields.get("columns")
        if columns and value in columns:
            raise ValueError(
                f"column {value!r} is also listed in data.columns; a column "
                "cannot be both a feature and the weights"
            )

    def _read_frame(self):
        """The lazy dask frame of ``path`` (may parse a sample now)."""
        raise NotImplementedError  # pragma: no cover - every table kind implements it

    def _field_checks(self) -> list:
        """Lazy per-block checks of the rows' field counts (see :func:`_first_bad_line`)."""
        return []

    def _frame(self):
        path = self.path
        if not is_url(path):
            matches = glob.glob(os.path.expanduser(path)) if glob.has_magic(path) else None
            if matches == [] or (matches is None and not Path(path).expanduser().exists()):
                raise JobError(f"file not found: {path}", key="data.path")
        try:
            return self._read_frame()
        except (ValueError, OSError) as exc:
            if is_url(path) and not isinstance(exc, ValueError):
                raise storage_error(exc, path, self.source) from None
            # read_csv parses a sample of the first file now; pandas counts lines per block
            checks = self._field_checks()
            bad = _first_bad_line(dask.compute(checks)[0]) if checks else None
            if bad is not None:
                raise _csv_line_error(bad) from None
            raise JobError(
                f"cannot read {path} as {self.source} ({exc})", key="data.path"
            ) from None
        except Exception as exc:  # botocore's own (no credentials), an s3fs import error
            if not is_url(path):
                raise
            raise storage_error(exc, path, self.source) from None

    @property
    def _options(self) -> dict:
        """``storage_options`` for fsspec (a URL's; none for local files)."""
        return dict(self.storage_options or {}) if is_url(self.path) else {}

    def _check_weights_column(self, df) -> None:
        import pandas as pd

        wcol, available = self.weights, [str(c) for c in df.columns]
        if wcol not in available:
            raise JobError(
                f"no weights column {wcol!r} in {self.path} (available: {', '.join(available)})",
                key="data.weights",
            )
        if not pd.api.types.is_numeric_dtype(df.dtypes[wcol]) or pd.api.types.is_bool_dtype(
            df.dtypes[wcol]
        ):
            raise JobError(
                f"weights column {wcol!r} in {self.path} is {df.dtypes[wcol]}, not numeric",
                key="data.weights",
            )

    def _features(self, full):
        """The frame of the feature columns, all numeric, cast to ``dtype``."""
        import pandas as pd

        df, available = full, [str(c) for c in full.columns]
        if self.columns is not None:
            missing = [c for c in self.columns if c not in available]
            if missing:
                raise JobError(
                    f"no column(s) {', '.join(map(repr, missing))} in {self.path} "
                    f"(available: {', '.join(available)})",
                    key="data.columns",
                )
            df = df[list(self.columns)]
        elif self.weights is not None:
            df = df[[c for c in df.columns if str(c) != self.weights]]
        numeric = pd.api.types.is_numeric_dtype
        bad = [f"{c!r} ({t})" for c, t in df.dtypes.items() if not numeric(t)]
        if bad and _no_rows(full):  # an empty table's columns are inferred as text
            raise JobError(f"{self.path} has no rows (only a header)", key="data.path")
        if bad:
            hint = "choose numeric columns" if self.columns else "list the numeric columns"
            raise JobError(
                f"non-numeric column(s) {', '.join(bad)} in {self.path}; {hint} with data.columns",
                key="data.columns",
            )
        # Casting the frame first turns nullable integer columns' <NA> into NaN, not objects.
        return df.astype(self.dtype)

    def _table(self, lengths: bool = True, weights: bool = False):
        """The features as a dask array; with ``weights``, the weights column is appended
        as the last column (read from the same frame, so the rows line up block by block)."""
        full = self._frame()
        if self.weights is not None:
            self._check_weights_column(full)
        df = self._features(full)
        if weights and self.weights is not None:
            df = df.assign(__dask_em_weights__=full[self.weights].astype("float64"))
        if not lengths:
            return df.to_dask_array()
        # Every partition is parsed here to count its rows: bad rows show up now. A CSV's
        # field counts are checked in the same computation, since pandas fills a short row
        # with NaN, which would pass for missing values.
        checks: list = []
        try:
            checks = self._field_checks()
            sizes, found = dask.compute([dask.delayed(len)(p) for p in df.to_delayed()], checks)
        except ValueError as exc:  # pandas' ParserError, dask's dtype mismatch
            bad = _first_bad_line(dask.compute(checks)[0]) if checks else None
            raise (_csv_line_error(bad) if bad else self._parse_error(exc)) from None
        except JobError:
            raise
        except Exception as exc:  # an object store's: gone, refused, no credentials
            if not is_url(self.path):
                raise
            raise storage_error(exc, self.path, self.source) from None
        bad = _first_bad_line(found)
        if bad is not None:
            raise _csv_line_error(bad)
        x = df.to_dask_array(lengths=tuple(int(n) for n in sizes))
        return x.rechunk((self.chunk_rows, x.shape[1]))

    def _parse_error(self, exc: ValueError) -> JobError:
        """A one-line message for a table that fails to parse once its rows are read."""
        text = str(exc)
        # dask: "Mismatched dtypes ... - a\n  ValueError(\"could not convert string ...\")"
        m = re.search(r"^- (.+)\n\s+\w+\((['\"])(.*)\2\)\s*$", text, re.M)
        if "Mismatched dtypes" in text and m:
            return JobError(
                f"column {m.group(1)!r} of {self.path} holds non-numeric values "
                f"({m.group(3)}); fix the file or leave the column out with data.columns",
                key="data.columns",
            )
        first = next(
            (line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__
        )
        return JobError(
            f"cannot parse {self.path} as {self.source} ({first}); check that every row has "
            "the same number of fields",
            key="data.path",
        )

    def read(self):
        return self._table()

    def load_weighted(self):
        both = self._table(weights=True)
        d = both.shape[1] - 1
        if both.shape[0] == 0:
            raise JobError(f"{self.path} has no rows", key="data.path")
        if d == 0:
            raise JobError(f"{self.path} has no columns (features)", key="data.path")
        return both[:, :d].astype(self.dtype, copy=False), both[:, d]

    def check(self) -> tuple:
        # the columns and their types, without a pass over the rows
        return self._table(lengths=False).shape

    def weights_files(self) -> list[str]:
        return []  # the weights are a column of the same file


class ParquetSource(_TableSource):
    """``source: parquet``: a parquet file, folder or glob (local or a URL)."""

    source: Literal["parquet"]
    suffixes: ClassVar[tuple[str, ...]] = (".parquet", ".pq")

    def _read_frame(self):
        import dask.dataframe as dd

        return dd.read_parquet(self.path, storage_options=self._options)


class CsvSource(_TableSource):
    """``source: csv``: a CSV file or glob with a header row (local or a URL)."""

    source: Literal["csv"]
    suffixes: ClassVar[tuple[str, ...]] = (".csv",)

    def _read_frame(self):
        import dask.dataframe as dd

        return dd.read_csv(self.path, storage_options=self._options)

    def _field_checks(self) -> list:
        return _csv_field_checks(self.path, self._options)


_CSV_CHECK_BLOCK = 64 * 2**20


def _csv_field_checks(path: str, storage_options: dict | None = None) -> list:
    """Lazy per-block field counts of every file a CSV path names (see
    :func:`_csv_block_fields`); pass their values to :func:`_first_bad_line`."""
    import fsspec
    from dask import delayed

    fs, _, files = fsspec.get_fs_token_paths(path, storage_options=storage_options)
    out = []
    for f in sorted(files):
        size = fs.size(f)
        with fs.open(f, "rb") as fh:
            n_fields = len(next(csv.reader([fh.readline().decode("utf-8", "replace")]), []))
        for offset in range(0, max(size, 1), _CSV_CHECK_BLOCK):
            out.append(
                delayed(_csv_block_fields, pure=True)(fs, f, offset, _CSV_CHECK_BLOCK, n_fields)
            )
    return out


def _csv_block_fields(fs, path, offset, length, n_fields):
    """``(path, lines in the block, (first bad line in the block, its field count) or None)``.

    The block is the whole lines starting in ``[offset, offset + length)``, as dask's
    ``read_csv`` splits a file. Blank lines are skipped as pandas does. Without quotes a
    line's fields are its commas plus one, counted with numpy; with quotes, by the
    ``csv`` module.
    """
    from fsspec.utils import read_block

    with fs.open(path, "rb") as fh:
        data = read_block(fh, offset, length, delimiter=b"\n")
    n_lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    if b'"' in data:
        reader = csv.reader(_io.StringIO(data.decode("utf-8", "replace"), newline=""))
        for row in reader:
            if row and len(row) != n_fields:
                return path, n_lines, (reader.line_num - 1, len(row))
        return path, n_lines, None
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    if len(ends) < n_lines:
        ends = np.append(ends, len(buf))
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    fields = np.bincount(np.searchsorted(ends, np.flatnonzero(buf == ord(","))), minlength=n_lines)
    fields = fields[:n_lines] + 1
    width = ends - starts
    cr = (width > 0) & (buf[np.maximum(ends - 1, 0)] == ord("\r"))
    blank = (width - cr) == 0
    bad = np.flatnonzero((fields != n_fields) & ~blank)
    return path, n_lines, (int(bad[0]), int(fields[bad[0]])) if len(bad) else None


def _first_bad_line(blocks) -> tuple[str, int, int] | None:
    """``(file, 1-based line number, field count)`` of the first short or long row."""
    seen: dict[str, int] = {}
    for path, n_lines, bad in blocks:
        before = seen.get(path, 0)
        if bad is not None:
            return path, before + bad[0] + 1, bad[1]
        seen[path] = before + n_lines
    return None


def _csv_line_error(bad: tuple[str, int, int]) -> JobError:
    path, line, found = bad
    return JobError(
        f"line {line} of {path} has {found} field(s), not as many as the header's; fix "
        "that row (an empty field, as in 1,,3, is a missing value)",
        key="data.path",
    )


def _no_rows(df) -> bool:
    """Whether a dask frame has no rows (reads until the first row; only on error paths)."""
    try:
        return len(df.head(1, npartitions=-1, compute=True)) == 0
    except Exception:
        return False
