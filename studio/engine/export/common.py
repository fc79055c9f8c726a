"""What every exporter needs around the export itself: exporters kept quiet (their warnings and
log chatter go nowhere, what matters is recorded in the result), files written in a scratch
folder beside the target and moved in with ``os.replace`` so a failed export leaves nothing
half-written, and an exception cut to the one line a result or a report can show.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from studio.engine.config_io import FILE_MODE


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters talk a lot (deprecation notices, tracer warnings, fallbacks logged with full
    tracebacks); what matters is recorded in the result, the rest is kept out of the terminal."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir",
             "onnxruntime", "root")
    loggers = [logging.getLogger(n) for n in names if n != "root"] + [logging.getLogger()]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


@contextlib.contextmanager
def _scratch(folder: Path) -> Iterator[Path]:
    """A temporary folder inside ``folder`` (same file system: ``os.replace`` is atomic)."""
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _install(scratch: Path, folder: Path) -> list[Path]:
    """Move every file of ``scratch`` into ``folder``, each with ``os.replace``."""
    installed = []
    for source in sorted(p for p in scratch.iterdir() if p.is_file()):
        os.chmod(source, FILE_MODE)
        target = folder / source.name
        os.replace(source, target)
        installed.append(target)
    # the main file first: model.onnx before model.onnx.data
    return sorted(installed, key=lambda p: (p.suffix in (".data", ".json"), p.name))

