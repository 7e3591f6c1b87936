"""The ``dask-em`` command line (also ``python -m dask_em``).

Each command parses its arguments and calls one plain function from
:mod:`dask_em.jobs.runner`; bad input (:class:`~dask_em.jobs.config.JobError`) prints one line
``FILE: key.path: message`` and exits with code 2, without a traceback unless ``--debug``.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from dask_em.data.sources import SOURCES
from dask_em.jobs.config import (
    PRESET_SECTIONS,
    ClusterConfig,
    ConfigError,
    JobError,
    LocalClusterConfig,
    load_job,
    validate_preset,
)

__all__ = ["app", "main"]

#: The usual suffix of each file source, for the help of ``--data``.
_DATA_SUFFIXES = " ".join(cls.suffixes[0] for cls in SOURCES.values() if cls.suffixes)

app = typer.Typer(
    name="dask-em",
    help="Fit Gaussian mixture models with one-pass EM on Dask: run YAML jobs, predict, plot.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: key.path=value (repeatable)."),
]
Output = Annotated[
    str | None, typer.Option(help="Run folder or fsspec URL (replaces output.dir).")
]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing run folder.")]


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at emit time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _NoTraceback(logging.Filter):
    """Without --debug, distributed logs no tracebacks in the driver (e.g. while its
    client tries to reconnect to a lost scheduler); the runner reports the failure in
    one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None:
            return True
        if not record.getMessage().strip():
            return False  # only a traceback (``logger.exception(CancelledError())``)
        record.exc_info, record.exc_text = None, None
        return True


_NO_TRACEBACK = _NoTraceback()


def _setup_logging(debug: bool) -> None:
    # A logger's filter sees only its own records, a handler's every record it writes:
    # distributed's handler also writes e.g. ``distributed.batched``'s traceback when the
    # scheduler goes away mid-message. That handler is made when distributed is first
    # imported, so import it first.
    import distributed  # noqa: F401

    client_log = logging.getLogger("distributed.client")
    targets = [client_log, *logging.getLogger("distributed").handlers]
    for target in targets:
        if debug:
            target.removeFilter(_NO_TRACEBACK)
        else:
            target.addFilter(_NO_TRACEBACK)
    logger = logging.getLogger("dask_em")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    # The engine's own per-iteration lines are DEBUG; the runner's are INFO.
    logger.setLevel(logging.DEBUG if debug else logging.INFO)


def _fail(exc: BaseException, code: int, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, ConfigError) and len(exc.problems) > 1 and debug:
        for p in exc.problems:
            typer.echo(str(p), err=True)
    else:
        # One line, also for library errors whose text spans several (distributed's
        # "scheduler-connection-lost" message does).
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        typer.echo(
            text
            if isinstance(exc, JobError)
            else f"error: {type(exc).__name__}: {text} (run with --debug for the traceback)",
            err=True,
        )
    raise typer.Exit(code)


def _guard(debug: bool, fn: Callable[[], Any]) -> Any:
    _setup_logging(debug)
    try:
        return fn()
    except JobError as exc:
        _fail(exc, EXIT_BAD_INPUT, debug)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # anything else is a failure, not bad input
        _fail(exc, EXIT_FAILED, debug)


@app.command()
def run(
    job: Annotated[Path | None, typer.Argument(help="Job file (YAML).")] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Run on an existing scheduler, e.g. tcp://127.0.0.1:8786.")
    ] = None,
    attach: Annotated[
        str | None,
        typer.Option(help="Follow the submitted job JOB_ID to its end instead (as `wait`)."),
    ] = None,
    set_: Overrides = None,
    output: Output = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    overwrite: Overwrite = False,
    debug: Debug = False,
) -> None:
    """Run a job: fit the model and write the run folder."""
    from dask_em.jobs.runner import run_job

    if attach is not None:
        if job is not None:
            _fail(JobError("give a job file or --attach JOB_ID, not both"), EXIT_BAD_INPUT, debug)
        wait(attach, scheduler=scheduler, debug=debug)
        return
    if job is None:
        _fail(JobError("missing the job file (JOB)"), EXIT_BAD_INPUT, debug)

    def go():
        config = load_job(job, overrides=set_ or (), scheduler=scheduler, output=output)
        result = run_job(config, resume=resume, overwrite=overwrite)
        typer.echo(str(result.path))

    _guard(debug, go)


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Job files or preset files.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="key.path=value")] = None,
    check_data: Annotated[
        bool, typer.Option(help="Also open the data source (file, dataset, columns, dtypes).")
    ] = False,
    debug: Debug = False,
) -> None:
    """Check job (or preset) files; print every problem, exit 2 if there are any."""
    from dask_em.data.sources import check_data as _check_data

    _setup_logging(debug)
    bad = False
    for f in files:
        try:
            section = _preset_section(f)
            if section is not None:
                validate_preset(f, section)
            else:
                config = load_job(f, overrides=set_ or ())
                if check_data:
                    try:
                        _check_data(config.data)
                    except JobError as exc:
                        raise exc.in_file(f) from None
            typer.echo(f"{f}: ok")
        except ConfigError as exc:
            bad = True
            for p in exc.problems:
                typer.echo(str(p), err=True)
        except JobError as exc:
            bad = True
            typer.echo(str(exc), err=True)
    if bad:
        raise typer.Exit(EXIT_BAD_INPUT)


def _preset_section(path: Path) -> str | None:
    """``cluster`` for ``configs/cluster/x.yaml`` (and so on), else None (a job file)."""
    parent = path.resolve().parent
    if parent.name in PRESET_SECTIONS and parent.parent.name == "configs":
        return parent.name
    return None


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Run folder or model.npz (path or URL).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write.")],
    data: Annotated[
        str | None,
        typer.Option(
            help=f"Data file ({_DATA_SUFFIXES}) or job .yaml; default: the run's training data."
        ),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="HDF5 dataset / zarr array.")] = None,
    columns: Annotated[str | None, typer.Option(help="parquet/csv columns, a,b,c")] = None,
    chunk_rows: Annotated[int | None, typer.Option(min=1)] = None,
    probabilities: Annotated[bool, typer.Option(help="Also write probabilities.")] = False,
    scheduler: Annotated[str | None, typer.Option(help="Existing scheduler address.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the output folder.")] = False,
    debug: Debug = False,
) -> None:
    """Write predicted labels (zarr) for data, out of core."""
    from dask_em.jobs.runner import data_config_for, predict_job

    def go():
        cols = [c.strip() for c in columns.split(",")] if columns else None
        data_cfg = data_config_for(
            data, model_path=model, dataset=dataset, columns=cols, chunk_rows=chunk_rows
        )
        cluster = (
            ClusterConfig(address=scheduler)
            if scheduler
            else ClusterConfig(local=LocalClusterConfig(processes=False, dashboard_address=None))
        )
        path = predict_job(
            model,
            data_cfg,
            output,
            cluster=cluster,
            probabilities=probabilities,
            overwrite=overwrite,
        )
        typer.echo(str(path))

    _guard(debug, go)


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="Run folder.")],
    debug: Debug = False,
) -> None:
    """Redraw a run folder's pictures."""
    from dask_em.jobs.runner import plot_run

    def go():
        for p in plot_run(run_dir):
            typer.echo(str(p))

    _guard(debug, go)


@app.command()
def info(
    model: Annotated[str, typer.Argument(help="Run folder or model.npz (path or URL).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    debug: Debug = False,
) -> None:
    """Describe a fitted model."""
    from dask_em.jobs.runner import model_info

    def go():
        data = model_info(model)
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        typer.echo(f"{data['file']}")
        typer.echo(
            f"  {data['kind']} mixture: {data['n_components']} components, "
            f"{data['covariance_type']} covariance, {data['n_features']} features"
        )
        if "n_effective_components" in data:
            typer.echo(
                f"  {data['weight_concentration_prior_type']} prior: "
                f"{data['n_effective_components']} effective component(s) with weight above "
                f"{data['weight_threshold']:g}; pruned: "
                + (" ".join(map(str, data["pruned_components"])) or "none")
            )
        typer.echo(
            f"  converged: {data['converged']} after {data['n_iter']} iteration(s); "
            f"lower bound {data['lower_bound']}"
        )
        if data.get("bic") is not None:
            typer.echo(
                f"  BIC {data['bic']:.6g}  AIC {data['aic']:.6g}  ({data['n_samples']} rows)"
            )
        typer.echo("  weights: " + " ".join(f"{w:.4f}" for w in data["weights"]))

    _guard(debug, go)


@app.command("make-data")
def make_data(
    job: Annotated[Path, typer.Argument(help="Job whose data is zarr with a synthetic spec.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="key.path=value")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing scheduler address.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing data.")] = False,
    debug: Debug = False,
) -> None:
    """Write a job's synthetic data set to zarr (for out-of-core runs)."""
    from dask_em.jobs.runner import make_data as _make_data

    def go():
        config = load_job(job, overrides=set_ or (), scheduler=scheduler)
        typer.echo(str(_make_data(config, overwrite=overwrite)))

    _guard(debug, go)


# ------------------------------------------------------------------------ submitted jobs

Scheduler = Annotated[
    str | None,
    typer.Option(
        envvar="DASK_SCHEDULER_ADDRESS",
        help="The scheduler, e.g. tcp://10.0.0.5:8786 (default: $DASK_SCHEDULER_ADDRESS).",
    ),
]
JobId = Annotated[str, typer.Argument(help="The id `dask-em submit` printed.")]


def _address(scheduler: str | None) -> str:
    if not scheduler:
        raise JobError("give --scheduler ADDR (or set DASK_SCHEDULER_ADDRESS)", key="--scheduler")
    return scheduler


@app.command()
def submit(
    job: Annotated[Path, typer.Argument(help="Job file (YAML).")],
    scheduler: Scheduler = None,
    set_: Overrides = None,
    output: Output = None,
    resume: Annotated[bool, typer.Option(help="Continue from the kept checkpoint.")] = False,
    overwrite: Overwrite = False,
    debug: Debug = False,
) -> None:
    """Start a job on a cluster and return at once; prints the job id."""
    from dask_em.jobs.submit import submit_job

    def go():
        config = load_job(job, overrides=set_ or (), scheduler=scheduler, output=output)
        typer.echo(submit_job(config, resume=resume, overwrite=overwrite))

    _guard(debug, go)


@app.command()
def status(
    job_id: Annotated[str | None, typer.Argument(help="One job (default: every job).")] = None,
    scheduler: Scheduler = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    debug: Debug = False,
) -> None:
    """Show the submitted jobs the scheduler knows: state, progress or outcome."""
    from dask_em.jobs.submit import describe, job_records, scheduler_client

    def go():
        address = _address(scheduler)
        with scheduler_client(address) as client:
            records = job_records(client, address, job_id)
        if as_json:
            rows = [{k: v for k, v in r.items() if k != "log"} for r in records]
            typer.echo(json.dumps(rows, indent=2))
        elif not records:
            typer.echo(f"no jobs on the scheduler at {address}", err=True)
        for r in records if not as_json else ():
            typer.echo(describe(r))

    _guard(debug, go)


@app.command()
def logs(job_id: JobId, scheduler: Scheduler = None, debug: Debug = False) -> None:
    """Print a submitted job's progress lines."""
    from dask_em.jobs.submit import job_log

    def go():
        for line in job_log(_address(scheduler), job_id):
            typer.echo(line)

    _guard(debug, go)


@app.command()
def cancel(
    job_id: JobId,
    scheduler: Scheduler = None,
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the job to stop.")
    ] = 60.0,
    debug: Debug = False,
) -> None:
    """Stop a submitted job at its next iteration (partial output removed, checkpoint kept)."""
    from dask_em.jobs.submit import cancel_job, describe

    def go():
        record = cancel_job(_address(scheduler), job_id, timeout=timeout)
        if record["state"] not in ("cancelled", "finished", "failed"):
            typer.echo(f"{job_id}: cancel requested; it stops at its next iteration", err=True)
        typer.echo(describe(record))

    _guard(debug, go)


@app.command()
def wait(job_id: JobId, scheduler: Scheduler = None, debug: Debug = False) -> None:
    """Follow a submitted job to its end: its progress lines, then its run folder.

    Exit code 0 when it finished, 1 when it failed or was cancelled.
    """
    from dask_em.jobs.submit import follow_job

    def go():
        return follow_job(
            _address(scheduler), job_id, on_line=lambda line: typer.echo(line, err=True)
        )

    record = _guard(debug, go)
    if record["state"] == "finished":
        typer.echo((record.get("result") or {}).get("path"))
        return
    why = record.get("error") or record.get("note") or ""
    typer.echo(f"{job_id} {record['state']}: {why}".rstrip(": "), err=True)
    raise typer.Exit(EXIT_FAILED)


def main() -> None:
    """Entry point of the ``dask-em`` console script."""
    app(prog_name="dask-em")
