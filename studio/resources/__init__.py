"""Package data: the bundled sample dataset (and, later, icons and the style sheet)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_dataset() -> Path:
    """The folder of the bundled handwritten-digits sample (see its PROVENANCE.md)."""
    folder = resources.files(__name__) / "sample_digits"
    return Path(str(folder))
