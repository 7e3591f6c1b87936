"""Progress lines and checkpoints of a job's fit: the fit callbacks (one fit, and a model
selection grid) and the checkpoint files they write and :func:`dask_em.jobs.runner.run_job`
reads back with ``--resume``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dask_em.data.writers import (
    atomic_savez,
    load_npz,
)
from dask_em.jobs.config import JobError

log = logging.getLogger("dask_em.jobs.runner")


class _Progress:
    """The fit callback: terminal line, checkpoint, then the caller's hook.

    The checkpoint is written before the hook runs, so a hook that stops the fit (tests
    use an exception after iteration 3) leaves that iteration resumable.
    """

    def __init__(
        self,
        checkpoint: Path | None,
        fingerprint: str,
        label: str,
        history: dict[int, float],
        hook: Callable | None,
    ):
        self.checkpoint = checkpoint
        self.fingerprint = fingerprint
        self.label = label
        self.history = history  # iteration -> seconds
        self.hook = hook

    def __call__(self, progress) -> None:
        self.history[int(progress.iteration)] = float(progress.seconds)
        # Report the starts this iteration moved (converged ones keep their old bound).
        moved = [c for c in progress.candidates if len(c.lower_bounds) == progress.iteration]
        started = moved or [c for c in progress.candidates if c.lower_bounds]
        best = max(started, key=lambda c: c.lower_bounds[-1])
        lb = best.lower_bounds[-1]
        change = lb - best.lower_bounds[-2] if len(best.lower_bounds) > 1 else float("nan")
        running = sum(bool(c.active) for c in progress.candidates)
        starts = (
            f"  {running}/{len(progress.candidates)} starts running"
            if len(progress.candidates) > 1
            else ""
        )
        log.info(
            "%siter %4d  pass %4d  lower bound %.10g  change %+.3e  %.3f s/iter%s",
            self.label,
            progress.iteration,
            progress.n_passes,
            lb,
            change,
            progress.seconds,
            starts,
        )
        if self.checkpoint is not None:
            arrays = {f"em_{k}": v for k, v in progress.to_arrays().items()}
            _write_checkpoint(self.checkpoint, arrays, self.fingerprint, self.history)
        if self.hook is not None:
            self.hook(progress)


def _write_checkpoint(path: Path, arrays: dict, fingerprint: str, history: dict) -> None:
    """Save a run's state with the job's fingerprint and the seconds of each iteration."""
    its = sorted(history)
    arrays["job_fingerprint"] = np.asarray(fingerprint)
    arrays["history_iteration"] = np.asarray(its, dtype=np.int64)
    arrays["history_seconds"] = np.asarray([history[i] for i in its])
    atomic_savez(path, arrays)


def _load_checkpoint(path: Path, fingerprint: str) -> dict:
    """The arrays of a checkpoint written for this job (its fingerprint), else JobError."""
    arrays = load_npz(path)
    if str(arrays.get("job_fingerprint", "")) != fingerprint:
        raise JobError(
            f"the checkpoint {path} was written for a different data/model configuration; "
            "run without --resume to start over",
            key="--resume",
        )
    return arrays


def _read_checkpoint(path: Path, fingerprint: str):
    from dask_em import EMProgress

    arrays = _load_checkpoint(path, fingerprint)
    progress = EMProgress.from_arrays({k[3:]: v for k, v in arrays.items() if k.startswith("em_")})
    history = dict(
        zip(arrays["history_iteration"].tolist(), arrays["history_seconds"].tolist(), strict=True)
    )
    return progress, history


class _GridProgress:
    """The model-selection callback: terminal line, checkpoint of the whole grid, then
    the caller's hook (with the grid's ``EMProgress``).

    As :class:`_Progress`, the checkpoint is written before the hook runs, so a hook that
    stops the run leaves that iteration resumable.
    """

    def __init__(
        self,
        checkpoint: Path | None,
        fingerprint: str,
        labels: list[str],
        history: dict[int, float],
        hook: Callable | None,
    ):
        self.checkpoint = checkpoint
        self.fingerprint = fingerprint
        self.labels = labels
        self.history = history  # iteration -> seconds of the grid's shared pass
        self.hook = hook

    def __call__(self, state) -> None:
        progress = state.progress
        self.history[int(progress.iteration)] = float(progress.seconds)
        starts = [
            (j, c) for j, c in enumerate(progress.candidates) if j not in state.failed_starts
        ]
        # Report the starts this iteration moved (converged ones keep their old bound).
        moved = [(j, c) for j, c in starts if len(c.lower_bounds) == progress.iteration]
        started = moved or [(j, c) for j, c in starts if c.lower_bounds]
        live = {state.owner[j] for j, c in starts if c.active}
        if started:
            j, best = max(started, key=lambda jc: jc[1].lower_bounds[-1])
            best_text = f"{best.lower_bounds[-1]:.10g} [{self.labels[state.owner[j]]}]"
        else:
            best_text = "none"
        log.info(
            "iter %4d  pass %4d  %d/%d candidates running  best lower bound %s  %.3f s/iter",
            progress.iteration,
            progress.n_passes,
            len(live),
            len(self.labels),
            best_text,
            progress.seconds,
        )
        if self.checkpoint is not None:
            _write_checkpoint(self.checkpoint, state.to_arrays(), self.fingerprint, self.history)
        if self.hook is not None:
            self.hook(progress)


def _read_selection_checkpoint(path: Path, fingerprint: str):
    from dask_em.mixture._selection import SelectionProgress

    arrays = _load_checkpoint(path, fingerprint)
    try:
        state = SelectionProgress.from_arrays(arrays)
    except ValueError as exc:
        raise JobError(
            f"the checkpoint {path} is not a model-selection checkpoint ({exc}); "
            "run without --resume to start over",
            key="--resume",
        ) from None
    history = dict(
        zip(arrays["history_iteration"].tolist(), arrays["history_seconds"].tolist(), strict=True)
    )
    return state, history
