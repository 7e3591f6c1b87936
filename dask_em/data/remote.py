"""Run folders at an fsspec URL (``s3://bucket/runs/name``, ``file:///shared/runs/name``).

Object stores have no atomic rename, so a run folder at a URL is written the way
:class:`~dask_em.data.folders.RunFolder` writes a local one, with copies in place of
renames: the run is staged under the prefix ``.<name>.partial/`` (marked as dask-em's
when it is created; it also holds the checkpoint while the job runs), its files are
copied to the final prefix, and the marker listing them, :data:`MARKER`, is written
there LAST. A reader that finds a complete marker therefore finds every file it lists,
and a prefix without one is refused by the readers. Nothing is removed or replaced
unless a marker says dask-em wrote it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from dask_em.data.base import is_url
from dask_em.data.folders import (
    KINDS,
    MARKER,
    check_output_location,
    marker_document,
    read_marker,
)
from dask_em.errors import JobError

__all__ = [
    "CHECKPOINT_FILES",
    "RemoteRunFolder",
    "check_url",
    "check_url_output",
    "read_finished_file",
]

#: The checkpoint files of a run's staging folder, relative to it (one fit; a grid).
CHECKPOINT_FILES = ("checkpoint.npz", "checkpoints/selection.npz")


def check_url(url: str, *, key: str) -> None:
    """Refuse a URL that carries credentials (they would end up in logs and status lines).

    Raises
    ------
    JobError
    """
    if "@" in urlsplit(url).netloc:
        # Never echo it: the part before '@' may be a secret.
        raise JobError(
            "the URL contains credentials (user:secret@); remove them and give them to the "
            "workers the storage's usual way (environment, config files, instance roles)",
            key=key,
        )


def check_url_output(
    url: str, *, key: str, inputs: Iterable[tuple[str, str | Path | None]] = ()
) -> None:
    """:func:`~dask_em.data.folders.check_output_location` for an output URL: refuse one
    that is, contains or sits inside one of the command's inputs.

    A ``file://`` URL is checked as the local path it names (against local inputs too);
    other URLs against the inputs given as URLs, prefix by prefix.

    Raises
    ------
    JobError
    """
    check_url(url, key=key)
    parts = urlsplit(url)
    if parts.scheme in ("file", "local"):
        check_output_location(parts.path, key=key, inputs=inputs)
        return
    out = url.rstrip("/")
    for label, path in inputs:
        if path is None or not is_url(str(path)):
            continue
        inp = str(path).rstrip("/")
        how = (
            "is" if out == inp
            else "contains" if inp.startswith(out + "/")
            else "is inside" if out.startswith(inp + "/")
            else None
        )  # fmt: skip
        if how is not None:
            raise JobError(
                f"{url} {how} the {label} {path}; writing there could replace or delete "
                "it: choose a new folder of its own for the output, e.g. .../runs/<name>",
                key=key,
            )


class RemoteRunFolder:
    """A run folder at an fsspec URL that appears complete or not at all.

    Parameters
    ----------
    url : str
        The final folder, e.g. ``s3://bucket/runs/name``.
    overwrite : bool
        Replace an existing run folder (only one whose marker says dask-em wrote it).
    key : str
        How the user named ``url``, for messages.
    """

    def __init__(self, url: str, *, overwrite: bool = False, key: str = "output.dir"):
        import fsspec

        check_url(url, key=key)
        self.url, self.key, self.overwrite = url.rstrip("/"), key, overwrite
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.root = root.rstrip("/")
        parent, _, name = self.root.rpartition("/")
        if not parent or not name:
            raise JobError(
                f"{url} is not a folder inside a bucket or volume; write e.g. "
                "s3://bucket/runs/<name>",
                key=key,
            )
        self.staging = f"{parent}/.{name}.partial"
        #: The staging prefix as a URL, for messages.
        self.staging_url = f"{self.url.rpartition('/')[0]}/.{name}.partial"
        # On a local filesystem a half-written file is visible; object stores show a
        # PUT all at once.
        self._local = "file" in self.fs.protocol or "local" in self.fs.protocol

    # ----------------------------------------------------------------------------- helpers

    def _marker(self, prefix: str) -> dict | None:
        """The marker at ``prefix`` (as :func:`~dask_em.data.folders.read_marker`)."""
        try:
            doc = json.loads(self.fs.cat_file(f"{prefix}/{MARKER}"))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(doc, dict) or doc.get("kind") not in KINDS:
            return None
        return doc

    def _occupied(self, prefix: str) -> bool:
        return self.fs.exists(prefix) and bool(self.fs.find(prefix))

    def _put(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path``, all at once for readers."""
        self.fs.makedirs(self.fs._parent(path), exist_ok=True)
        if not self._local:
            self.fs.pipe_file(path, data)
            return
        tmp = f"{self.fs._parent(path)}/.{path.rpartition('/')[2]}.{secrets.token_hex(6)}.tmp"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)

    def _not_ours(self, where: str, what: str) -> JobError:
        return JobError(
            f"{where} {what} but was not written by dask-em as a run folder (no {MARKER} "
            "marker); dask-em replaces only its own run folders: choose another folder, "
            "or move that one away yourself",
            key=self.key,
        )

    # ------------------------------------------------------------------------------ checks

    def check(self, *, resume: bool = False) -> None:
        """Refuse an existing folder or staging prefix that may not be replaced.

        Raises
        ------
        JobError
        """
        # Listings cached by this process's filesystem object (e.g. from a check before
        # the job started) may predate other writers.
        self.fs.invalidate_cache()
        if self._occupied(self.root):
            if not self.overwrite:
                raise JobError(
                    f"{self.url} already exists; pass --overwrite to replace it "
                    "or --output to choose another folder",
                    key=self.key,
                )
            doc = self._marker(self.root)
            if doc is None or doc["kind"] != "run":
                raise self._not_ours(self.url, "exists")
        staged = self._occupied(self.staging)
        doc = self._marker(self.staging) if staged else None
        if staged and (doc is None or doc["kind"] != "run"):
            raise self._not_ours(self.staging_url, "is in the way of the staging prefix")
        if resume and not self.has_checkpoint():
            raise JobError(
                f"nothing to resume: no checkpoint under {self.staging_url}", key="--resume"
            )

    def has_checkpoint(self) -> bool:
        """Whether the staging prefix is dask-em's and holds a checkpoint."""
        doc = self._marker(self.staging)
        if doc is None or doc["kind"] != "run":
            return False
        return any(self.fs.exists(f"{self.staging}/{name}") for name in CHECKPOINT_FILES)

    def prepare(self, *, resume: bool = False) -> None:
        """Check, then start the staging prefix afresh (or, with ``resume``, keep it)."""
        self.check(resume=resume)
        if resume:
            return
        self._remove_staging()
        self._put(f"{self.staging}/{MARKER}", _marker_bytes(complete=False))

    # ------------------------------------------------------------------------ checkpoints

    def push_checkpoints(self, local_staging: Path) -> None:
        """Copy the checkpoint files of a local staging folder to the staging prefix."""
        for name in CHECKPOINT_FILES:
            path = Path(local_staging) / name
            if path.is_file():
                self._put(f"{self.staging}/{name}", path.read_bytes())

    def pull_checkpoints(self, local_staging: Path) -> None:
        """Copy the staging prefix's checkpoint files into a local staging folder."""
        from dask_em.data.writers import atomic_write_bytes

        for name in CHECKPOINT_FILES:
            remote = f"{self.staging}/{name}"
            if self.fs.exists(remote):
                atomic_write_bytes(Path(local_staging) / name, self.fs.cat_file(remote))

    # ------------------------------------------------------------------------------ finish

    def commit(self, local_run: Path) -> str:
        """Publish a finished local run folder here; returns the URL.

        Its files are staged, copied to the final prefix, and the marker listing them is
        written last. A folder being replaced (``overwrite``) first loses its marker, so
        it reads as unfinished while its listed files are replaced or removed.

        Raises
        ------
        JobError
            The folder appeared, or changed owner, while the run was writing.
        """
        doc = read_marker(local_run)
        if doc is None or not doc.get("complete"):
            raise ValueError(f"{local_run} is not a finished run folder")
        files = list(doc["files"])
        for name in files:
            self._put(f"{self.staging}/{name}", (Path(local_run) / name).read_bytes())
        old = self._marker(self.root)
        if self._occupied(self.root):
            # Checked again: the folder may have appeared since prepare().
            if not self.overwrite:
                raise JobError(f"{self.url} appeared while the run was writing", key=self.key)
            if old is None or old["kind"] != "run":
                raise self._not_ours(self.url, "exists")
            self.fs.rm_file(f"{self.root}/{MARKER}")
        for name in files:
            self.fs.makedirs(self.fs._parent(f"{self.root}/{name}"), exist_ok=True)
            self.fs.copy(f"{self.staging}/{name}", f"{self.root}/{name}")
        for name in (old or {}).get("files", []):
            if name not in files and self.fs.exists(f"{self.root}/{name}"):
                self.fs.rm_file(f"{self.root}/{name}")
        self._put(f"{self.root}/{MARKER}", (Path(local_run) / MARKER).read_bytes())
        self._remove_staging()
        return self.url

    def discard(self) -> bool:
        """After a failure: keep the staging prefix if it holds a checkpoint, else remove
        it. Returns whether a checkpoint was kept."""
        if self.has_checkpoint():
            return True
        self._remove_staging()
        return False

    def _remove_staging(self) -> None:
        doc = self._marker(self.staging)
        if doc is not None and doc["kind"] == "run":
            self.fs.rm(self.staging, recursive=True)


def _marker_bytes(*, complete: bool) -> bytes:
    """An unfinished run marker (the finished one is the local run folder's own)."""
    return (json.dumps(marker_document("run", complete=complete), indent=2) + "\n").encode()


def read_finished_file(url: str, name: str, *, key: str = "path") -> bytes:
    """The bytes of ``name`` in the finished run folder at ``url``.

    Raises
    ------
    JobError
        No complete dask-em marker there (an unfinished or foreign folder), or the
        marker does not list ``name``.
    """
    folder = RemoteRunFolder(url, key=key)
    doc = folder._marker(folder.root)
    if doc is None or not doc.get("complete"):
        raise JobError(
            f"not a dask-em run folder, or an unfinished one (no complete {MARKER} marker)",
            file=url,
        )
    if name not in doc.get("files", []):
        raise JobError(f"the run folder has no {name}", file=url)
    return folder.fs.cat_file(f"{folder.root}/{name}")
