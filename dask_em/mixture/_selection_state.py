"""The state and the result of a model selection: :class:`SelectionProgress` (what the
callback of :func:`dask_em.select_model` receives and ``resume=`` takes) and
:class:`SelectionResult` (its table, models and best one)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dask_em.engine._em import EMProgress

CRITERIA = ("bic", "aic")
TABLE_COLUMNS = (
    "n_components",
    "covariance_type",
    "log_likelihood",
    "n_parameters",
    "bic",
    "aic",
    "converged",
    "n_iter",
    "lower_bound",
    "error",
)


@dataclass(frozen=True, eq=False)
class SelectionProgress:
    """Where a :func:`select_model` run has got to: what its ``callback`` receives after
    every EM iteration, and what its ``resume=`` takes to continue from there.

    Attributes
    ----------
    progress : EMProgress
        The state of every start of the whole grid after the last EM iteration (its
        ``candidates`` are the starts, in the order of ``owner``).
    owner : tuple of int
        For each start of ``progress.candidates``, its candidate: the index into
        ``grid`` (the row of the table).
    errors : dict of int to str
        Candidates (indices into ``grid``) with a start that failed at initialisation,
        and why; a candidate none of whose starts are left gets this as its ``error``.
    failed_starts : dict of int to str
        Starts (indices into ``progress.candidates``) dropped during EM because their
        M-step failed, and why (such a start is inactive and not a result).
    grid : tuple of (int, str)
        ``(n_components, covariance_type)`` of each candidate, in table order.
    n_features : int
        Columns of the data.
    n_init : int
    init_params : str
    missing : str
    seed : int
        The seed every candidate's starts were drawn from.
    n_rows_skipped : int
        Rows without any observed value (``missing='em'``), counted before the starts.
    """

    progress: EMProgress
    owner: tuple
    errors: dict
    failed_starts: dict
    grid: tuple
    n_features: int
    n_init: int
    init_params: str
    missing: str
    seed: int
    n_rows_skipped: int = 0

    @property
    def iteration(self) -> int:
        """EM iterations done."""
        return self.progress.iteration

    def to_arrays(self) -> dict:
        """Plain numpy arrays (savable with ``np.savez``, loadable without pickle).

        The grid state is under ``em_*`` (:meth:`EMProgress.to_arrays`), the rest under
        ``selection_*``.
        """
        out = {f"em_{k}": v for k, v in self.progress.to_arrays().items()}
        errors = sorted(self.errors.items())
        failed = sorted(self.failed_starts.items())
        out.update(
            {
                "selection_grid_n_components": np.asarray(
                    [k for k, _ in self.grid], dtype=np.int64
                ),
                "selection_grid_covariance_type": np.asarray(
                    [ct for _, ct in self.grid], dtype=np.str_
                ),
                "selection_owner": np.asarray(self.owner, dtype=np.int64),
                "selection_error_candidates": np.asarray([c for c, _ in errors], dtype=np.int64),
                "selection_error_messages": np.asarray([m for _, m in errors], dtype=np.str_),
                "selection_failed_starts": np.asarray([j for j, _ in failed], dtype=np.int64),
                "selection_failed_messages": np.asarray([m for _, m in failed], dtype=np.str_),
                "selection_n_features": np.asarray(self.n_features, dtype=np.int64),
                "selection_n_init": np.asarray(self.n_init, dtype=np.int64),
                "selection_init_params": np.asarray(self.init_params),
                "selection_missing": np.asarray(self.missing),
                "selection_seed": np.asarray(self.seed, dtype=np.int64),
                "selection_n_rows_skipped": np.asarray(self.n_rows_skipped, dtype=np.int64),
            }
        )
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping) -> SelectionProgress:
        """Rebuild from :meth:`to_arrays` output (or an ``np.load`` of it; other keys are
        ignored).

        Raises
        ------
        ValueError
            If an array is missing or the arrays do not fit together.
        """
        try:
            progress = EMProgress.from_arrays(
                {k[3:]: v for k, v in arrays.items() if k.startswith("em_")}
            )
            ks = np.asarray(arrays["selection_grid_n_components"]).tolist()
            cts = np.asarray(arrays["selection_grid_covariance_type"]).tolist()
            owner = tuple(int(c) for c in np.asarray(arrays["selection_owner"]).tolist())

            def pairs(keys, messages):
                keys = np.asarray(arrays[keys]).tolist()
                messages = np.asarray(arrays[messages]).tolist()
                if len(keys) != len(messages):
                    raise ValueError(f"{len(keys)} indices but {len(messages)} messages")
                return {int(i): str(m) for i, m in zip(keys, messages, strict=True)}

            errors = pairs("selection_error_candidates", "selection_error_messages")
            failed = pairs("selection_failed_starts", "selection_failed_messages")
            out = cls(
                progress=progress,
                owner=owner,
                errors=errors,
                failed_starts=failed,
                grid=tuple((int(k), str(ct)) for k, ct in zip(ks, cts, strict=True)),
                n_features=int(arrays["selection_n_features"]),
                n_init=int(arrays["selection_n_init"]),
                init_params=str(arrays["selection_init_params"]),
                missing=str(arrays["selection_missing"]),
                seed=int(arrays["selection_seed"]),
                n_rows_skipped=int(arrays["selection_n_rows_skipped"]),
            )
        except KeyError as exc:
            raise ValueError(f"not a model-selection state: array {exc} is missing") from None
        out._check_consistent()
        return out

    def _check_consistent(self) -> None:
        n_starts, n_cands = len(self.progress.candidates), len(self.grid)
        if len(self.owner) != n_starts:
            raise ValueError(
                f"inconsistent model-selection state: {n_starts} starts but "
                f"{len(self.owner)} owners"
            )
        bad = [c for c in (*self.owner, *self.errors) if not 0 <= c < n_cands]
        if bad:
            raise ValueError(
                f"inconsistent model-selection state: candidate {bad[0]} is not in a grid "
                f"of {n_cands}"
            )
        bad = [j for j in self.failed_starts if not 0 <= j < n_starts]
        if bad:
            raise ValueError(
                f"inconsistent model-selection state: start {bad[0]} is not one of "
                f"{n_starts} starts"
            )

    def _check_matches(self, grid, n_features, n_init, init_params, missing, seed) -> None:
        """Raise ValueError naming what of this call differs from the state's."""
        if list(self.grid) != list(grid):

            def show(g):
                return ", ".join(f"{ct} k={k}" for k, ct in g)

            raise ValueError(
                "resume does not match the grid: the state has the candidates "
                f"[{show(self.grid)}], this call [{show(grid)}]"
            )
        for name, saved, now in (
            ("n_features", self.n_features, n_features),
            ("n_init", self.n_init, n_init),
            ("init_params", self.init_params, init_params),
            ("missing", self.missing, missing),
            ("random_state", self.seed, seed),
        ):
            if now is not None and saved != now:
                what = "X has" if name == "n_features" else "this call has"
                raise ValueError(
                    f"resume does not match: the state has {name}={saved!r}, {what} {name}={now!r}"
                )


@dataclass(frozen=True, eq=False)
class SelectionResult:
    """The outcome of :func:`select_model`.

    Attributes
    ----------
    table : list of dict
        One row per candidate, in grid order (covariance types outer, numbers of
        components inner), with keys ``TABLE_COLUMNS``: ``log_likelihood`` is the total
        (weighted) log-likelihood of the final parameters, ``bic = -2 log_likelihood +
        n_parameters log(n)`` and ``aic = -2 log_likelihood + 2 n_parameters`` (lower is
        better, scikit-learn's sign), ``n`` the number of rows (the total weight with
        ``sample_weight``); ``lower_bound`` is scikit-learn's ``lower_bound_`` (the mean
        log-likelihood of the last E-step, i.e. of the parameters before the last
        M-step). A candidate that failed has NaN criteria and its ``error`` message.
    criterion : {'bic', 'aic'}
    best_index : int
        Row of the table with the lowest criterion.
    models : list of GaussianMixture or None
        The fitted model of each row (None where it failed).
    random_state : int
        The seed every candidate's starts were drawn from: refitting a row alone with
        ``GaussianMixture(..., random_state=random_state)`` gives the same model.
    n_samples : float
        ``n`` of the criteria.
    seconds : float
        Wall time of the whole selection.
    """

    table: list
    criterion: str
    best_index: int
    models: list
    random_state: int
    n_samples: float
    seconds: float

    @property
    def best_model(self):
        """The fitted model with the lowest criterion."""
        return self.models[self.best_index]

    @property
    def best(self) -> dict:
        """The table row of the best model."""
        return self.table[self.best_index]

    def to_dataframe(self):
        """The table as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.table, columns=list(TABLE_COLUMNS))

    def plot_bic(self, path, criterion: str | None = None) -> Path:
        """Write an mclust-style plot of the criterion against n_components (PNG).

        One line per covariance type, its own colour and marker; the best model is
        ringed. The y axis is scikit-learn's BIC, so lower is better (mclust plots the
        opposite sign, higher is better).

        Parameters
        ----------
        path : str or Path
        criterion : {'bic', 'aic'}, optional
            Default: the criterion of the selection.

        Returns
        -------
        Path
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        crit = criterion or self.criterion
        if crit not in CRITERIA:
            raise ValueError(f"criterion must be one of {list(CRITERIA)}, got {crit!r}")
        fig = Figure(figsize=(7.0, 5.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        markers = {"full": "o", "tied": "s", "diag": "^", "spherical": "D"}
        types = list(dict.fromkeys(r["covariance_type"] for r in self.table))
        for i, ct in enumerate(types):
            rows = sorted(
                (r for r in self.table if r["covariance_type"] == ct),
                key=lambda r: r["n_components"],
            )
            ax.plot(
                [r["n_components"] for r in rows],
                [r[crit] for r in rows],
                marker=markers.get(ct, "o"),
                color=f"C{i}",
                label=ct,
                mfc="none" if i % 2 else f"C{i}",
            )
        valid = [r for r in self.table if np.isfinite(r[crit])]
        if valid:
            best = min(valid, key=lambda r: r[crit])
            ax.plot(
                best["n_components"],
                best[crit],
                "o",
                ms=16,
                mfc="none",
                mec="k",
                label=f"best: {best['covariance_type']}, {best['n_components']} components",
            )
        ks = sorted({r["n_components"] for r in self.table})
        ax.set_xticks(ks)
        ax.set_xlabel("Number of components")
        ax.set_ylabel(f"{crit.upper()} (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(title="covariance type", loc="best")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, format="png")
        return path
