"""Errors a user can cause. Their message is one sentence that names the thing and what to do."""

from __future__ import annotations

import errno


class StudioError(Exception):
    """Base class of every error meant to be shown to a user as it is, without a traceback."""

    def __str__(self) -> str:
        # A DataLoader worker's error comes back as "Caught DatasetError in DataLoader worker
        # process 0.\nOriginal Traceback …\nstudio.engine.errors.DatasetError: <sentence>":
        # the user reads the sentence; the traceback stays in the log.
        text = super().__str__()
        if text.startswith("Caught ") and "Original Traceback" in text:
            last = text.rstrip().splitlines()[-1]
            name, sep, sentence = last.partition(": ")
            return sentence if sep and name.rsplit(".", 1)[-1].endswith("Error") else last
        return text


class DatasetError(StudioError):
    """The dataset folder cannot be used (missing, empty, a single class, …)."""


class BackboneError(StudioError):
    """An unknown backbone, or one that cannot be built as asked."""


class WeightsError(StudioError):
    """Weights that cannot be found, downloaded, read or matched to the model."""


class ConfigError(StudioError):
    """A configuration value that is missing, of the wrong type, or out of range."""


class DiskError(StudioError):
    """A file or folder that cannot be read or written: full disk, permissions, a vanished file."""


FULL = (errno.ENOSPC, errno.EDQUOT)

_REASONS = {
    errno.ENOSPC: ("the disk is full", "free some space on that disk"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or raise the quota"),
    errno.EACCES: ("permission was denied", "change its permissions or choose another place"),
    errno.EPERM: ("permission was denied", "change its permissions or choose another place"),
    errno.EROFS: ("the file system is read-only", "choose a folder on a writable disk"),
    errno.ENOENT: ("it does not exist (moved or deleted?)", "put it back or scan again"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another path"),
    errno.EISDIR: ("it is a folder, not a file", "choose a file"),
    errno.EIO: ("the disk reported an input/output error (failing or disconnected?)",
                "check the disk and its connection"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
}


def explain_os_error(error: OSError) -> tuple[str, str]:
    """(what went wrong, what to do) for an OSError, in words a user reads."""
    reason, remedy = _REASONS.get(error.errno or 0, (error.strerror or str(error), "try again"))
    return reason, remedy


def os_error_sentence(error: OSError, doing: str, remedy: str | None = None) -> str:
    """One sentence: ``doing`` (e.g. "saving the checkpoint") failed on which path, why, and
    what to do; ``remedy`` replaces the generic advice where the caller knows better."""
    reason, generic = explain_os_error(error)
    where = f" at {error.filename}" if error.filename else ""
    return f"{doing} failed{where}: {reason}; {remedy or generic}"
