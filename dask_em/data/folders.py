"""Folders dask-em writes, and the rules that keep it from touching anyone else's.

Every folder the project writes (a run, a prediction, a zarr store it made) holds one
marker file, :data:`MARKER`. It is created with the folder, which makes the folder
dask-em's own, and rewritten last with ``"complete": true`` and the list of files, which
makes it finished. Nothing is ever removed or replaced unless its marker says dask-em
wrote it, and an output location is refused up front when it is, contains, or sits inside
one of the command's inputs (data, weights, model, job file, checkpoint), or is or
contains the working folder, the home folder or the filesystem root.

:class:`RunFolder` is the one writer of whole folders: a staging sibling created by the
run, renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import json
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from dask_em.errors import JobError

__all__ = [
    "MARKER",
    "RunFolder",
    "check_output_location",
    "is_owned",
    "marker_document",
    "read_marker",
    "remove_owned",
    "write_marker",
]

MARKER = ".dask-em.json"
KINDS = ("run", "prediction", "zarr")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dask-em")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def marker_document(kind: str, *, complete: bool, files: list[str] | None = None) -> dict:
    """A marker's content: the folder's kind, dask-em's version, the time, and, when
    ``complete``, the files the folder holds (relative paths)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    doc = {
        "kind": kind,
        "dask_em_version": _version(),
        "complete": bool(complete),
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if complete:
        doc["files"] = list(files or [])
    return doc


def write_marker(folder: str | Path, kind: str, *, complete: bool) -> Path:
    """Write ``folder``'s marker: its kind, dask-em's version, and, when ``complete``,
    the files the folder holds (written last, so its presence means finished)."""
    folder = Path(folder)
    files = None
    if complete:
        files = sorted(
            str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
            and p != folder / MARKER
        )  # fmt: skip
    doc = marker_document(kind, complete=complete, files=files)
    path = folder / MARKER
    tmp = folder / f".{MARKER}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    # Over our own marker only: a foreign file of this name means the folder is not ours,
    # and callers check that before they write into it.
    os.replace(tmp, path)
    return path


def read_marker(folder: str | Path) -> dict | None:
    """The marker of ``folder`` as a dict, or None where there is none (or it is not one:
    a user's file of the same name does not make a folder dask-em's)."""
    path = Path(folder) / MARKER
    if path.is_symlink() or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("kind") not in KINDS:
        return None
    return doc


def is_owned(folder: str | Path, kind: str) -> bool:
    """Whether ``folder`` is a real folder (not a link) that dask-em wrote as ``kind``."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    doc = read_marker(folder)
    return doc is not None and doc["kind"] == kind


def remove_owned(folder: str | Path, kind: str) -> bool:
    """Remove ``folder`` if dask-em wrote it as ``kind``; return whether it did.

    The one place that deletes whole folders: anything without the marker stays.
    """
    if not is_owned(folder, kind):
        return False
    shutil.rmtree(folder)
    return True


# ----------------------------------------------------------------------- where output may go


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def _input_paths(path: str) -> list[Path]:
    """The local paths an input names (every match of a glob); none for a URL."""
    if "://" in path:
        return []
    expanded = os.path.expanduser(path)
    if glob.has_magic(expanded):
        return [_resolved(m) for m in glob.glob(expanded)]
    return [_resolved(expanded)]


def _conflict(out: Path, inp: Path) -> str | None:
    if out == inp:
        return "is"
    if out in inp.parents:
        return "contains"
    if inp in out.parents:
        return "is inside"
    return None


def check_output_location(
    output: str | Path, *, key: str, inputs: Iterable[tuple[str, str | Path | None]] = ()
) -> Path:
    """Refuse an output folder that could overwrite or swallow something of the user's.

    Parameters
    ----------
    output : str or Path
        The folder the command would write (it may not exist yet).
    key : str
        How the user named it (``output.dir``, ``--output``), for the message.
    inputs : iterable of (label, path)
        The command's inputs, e.g. ``("data", "data/x.zarr")``; None and URLs are passed
        over, globs stand for their matches.

    Returns
    -------
    Path
        ``output`` resolved.

    Raises
    ------
    JobError
        ``output`` is, contains or sits inside an input; is or contains the working
        folder or the home folder; or is the filesystem root.
    """
    out = _resolved(output)
    what = "choose a new folder of its own for the output, e.g. runs/<name>"
    if out == Path(out.anchor):
        raise JobError(f"{output} is the filesystem root; {what}", key=key)
    guarded = [("home folder", Path.home()), ("working folder", Path.cwd())]
    for label, place in guarded:
        place = _resolved(place)
        if out == place or out in place.parents:
            how = "is" if out == place else "contains"
            raise JobError(f"{output} {how} the {label} {place}; {what}", key=key)
    for label, path in inputs:
        if path is None:
            continue
        for inp in _input_paths(str(path)):
            how = _conflict(out, inp)
            if how is not None:
                raise JobError(
                    f"{output} {how} the {label} {path}; writing there could replace or "
                    f"delete it: {what}",
                    key=key,
                )
    return out


# ------------------------------------------------------------------------------ run folders


class RunFolder:
    """A folder (run or prediction) that appears complete or not at all.

    Everything is written into a staging sibling created by the run
    (``.<name>.partial``, marked as dask-em's when created); :meth:`commit` writes the
    completion marker last and renames the staging folder into place. A failed or killed
    run leaves only the staging folder, whose checkpoint ``--resume`` picks up. An
    existing folder is replaced only with ``overwrite`` and only if its marker says
    dask-em wrote it as this kind of folder.

    Parameters
    ----------
    path : Path
        The final folder.
    kind : {'run', 'prediction'}
    overwrite : bool
        Replace an existing folder of this kind (at commit time; until then it stays).
    resume : bool
        Keep the staging folder of an earlier, unfinished run.
    key : str
        How the user named ``path``, for messages.
    """

    CHECKPOINT = "checkpoint.npz"

    def __init__(
        self,
        path: str | Path,
        *,
        kind: str = "run",
        overwrite: bool = False,
        resume: bool = False,
        key: str = "output.dir",
    ):
        self.path = Path(path)
        self.kind, self.key = kind, key
        self.staging = self.path.parent / f".{self.path.name}.partial"
        self.overwrite = overwrite
        self.resume = resume

    def _not_ours(self, path: Path, what: str) -> JobError:
        return JobError(
            f"{path} {what} but was not written by dask-em as a {self.kind} folder (no "
            f"{MARKER} marker); dask-em replaces only its own {self.kind} folders: choose "
            "another folder, or move that one away yourself",
            key=self.key,
        )

    def check(self) -> None:
        """Refuse an existing target or staging folder that may not be replaced.

        Raises
        ------
        JobError
        """
        if self.path.exists() or self.path.is_symlink():
            if not self.overwrite:
                raise JobError(
                    f"{self.path} already exists; pass --overwrite to replace it "
                    "or --output to choose another folder",
                    key=self.key,
                )
            if not is_owned(self.path, self.kind):
                raise self._not_ours(self.path, "exists")
        staging_there = self.staging.exists() or self.staging.is_symlink()
        if self.resume:
            if not staging_there:
                raise JobError(
                    f"nothing to resume: no unfinished run at {self.staging}", key="--resume"
                )
            if not is_owned(self.staging, self.kind):
                raise self._not_ours(self.staging, "is the unfinished run to resume")
        elif staging_there and not is_owned(self.staging, self.kind):
            raise self._not_ours(self.staging, "is in the way of the staging folder")

    def prepare(self) -> Path:
        """Check (:meth:`check`), then create, or with ``resume`` reuse, the staging folder.

        Raises
        ------
        JobError
        """
        self.check()
        if not self.resume:
            remove_owned(self.staging, self.kind)  # an earlier run's leftovers
            self.staging.parent.mkdir(parents=True, exist_ok=True)
            self.staging.mkdir()
            write_marker(self.staging, self.kind, complete=False)
        return self.staging

    @property
    def checkpoint(self) -> Path:
        """The checkpoint file inside the staging folder."""
        return self.staging / self.CHECKPOINT

    def commit(self, keep: tuple[str, ...] = ()) -> Path:
        """Drop checkpoints not in ``keep``, mark the staging folder complete, and move it
        into place (an existing folder of this kind is moved aside, then removed).

        Raises
        ------
        JobError
            The target appeared, or changed owner, while the run was writing.
        """
        for name in (self.CHECKPOINT, "checkpoints"):
            target = self.staging / name
            if name in keep:
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        write_marker(self.staging, self.kind, complete=True)
        old = None
        if self.path.exists() or self.path.is_symlink():
            # Checked again: the folder may have been swapped since prepare().
            if not self.overwrite:
                raise JobError(f"{self.path} appeared while the run was writing", key=self.key)
            if not is_owned(self.path, self.kind):
                raise self._not_ours(self.path, "exists")
            old = self.path.parent / f".{self.path.name}.old-{secrets.token_hex(6)}"
            os.replace(self.path, old)
        os.replace(self.staging, self.path)
        fsync_dir(self.path.parent)
        if old is not None:
            remove_owned(old, self.kind)
        return self.path

    def discard(self) -> None:
        """Remove the staging folder (it is the run's own)."""
        remove_owned(self.staging, self.kind)
