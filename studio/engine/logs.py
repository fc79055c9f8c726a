"""The log file: where tracebacks go, so that the terminal and the window show one sentence.

Both faces call :func:`setup_logging` once. Everything from the ``studio`` logger (and
warnings from other libraries) goes to a rotating file in the user's log folder
(``$STUDIO_LOG_FILE`` overrides it); the terminal gets warnings and errors without their
tracebacks, unless ``-v`` asks for details. Sentences that say "the details are in …" name the
file through :func:`details_hint`.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import TextIO

import platformdirs

from studio.format import first_line

LOG_ENV = "STUDIO_LOG_FILE"
_FORMAT = "%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s"
_active: Path | None = None


def default_log_path() -> Path:
    override = os.environ.get(LOG_ENV)
    if override:
        return Path(override).expanduser()
    return platformdirs.user_log_path("finetune-studio", appauthor=False) / "studio.log"


def log_path() -> Path | None:
    """The file this process logs to, or None when it could not be opened."""
    return _active


def details_hint() -> str:
    """The end of a sentence about an unexpected error: where its details are."""
    if _active is not None:
        return f"the details are in {_active}"
    return "run the command again with -v to see the details"


class _Terminal(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the ``sys.stderr`` of the moment (tests and the app swap it), or to a stream."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream)
        self._fixed = stream

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return self._fixed or sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class _SentenceFormatter(logging.Formatter):
    """The terminal's format: the message alone, never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging(verbose: bool = False, stream: TextIO | None = None) -> Path | None:
    """Send records to the log file (all of ``studio``'s, INFO and up from the rest) and
    warnings to ``stream`` (stderr); returns the file's path, or None when it cannot be
    written (then details go to the terminal with -v only). Safe to call again."""
    global _active
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "studio", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.INFO)  # other libraries' debug records (PIL's, per image) cost time
    logging.getLogger("studio").setLevel(logging.DEBUG)
    terminal = _Terminal(stream)
    terminal.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:
        terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        terminal.setFormatter(_SentenceFormatter())
        terminal.addFilter(_studio_or_warning)
    terminal.studio = True  # type: ignore[attr-defined]
    root.addHandler(terminal)
    _active = None
    path = default_log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3,
                                                       encoding="utf-8", delay=False)
    except OSError:
        return None
    handler.setLevel(logging.DEBUG)
    handler.addFilter(_studio_or_info)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.studio = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    _active = path.resolve()
    return _active


def _studio_or_info(record: logging.LogRecord) -> bool:
    return record.name.startswith("studio") or record.levelno >= logging.INFO


def _studio_or_warning(record: logging.LogRecord) -> bool:
    """The terminal hears studio's own warnings; other libraries' go to the file only, unless
    they are errors. A record with a traceback is a detail: the user gets a sentence instead."""
    if record.exc_info or record.name == "py.warnings":
        return False
    return record.name.startswith("studio") or record.levelno >= logging.ERROR


def log_unexpected(logger: logging.Logger, what: str, error: BaseException) -> str:
    """Log ``error`` with its traceback and return the sentence a user sees instead."""
    logger.error("%s", what, exc_info=(type(error), error, error.__traceback__))
    return f"{what} unexpectedly ({type(error).__name__}: {first_line(error)}); {details_hint()}"

