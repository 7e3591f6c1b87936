"""The error bad input raises, shared by the job config and the data sources."""

from __future__ import annotations

from pathlib import Path

__all__ = ["JobError"]


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
