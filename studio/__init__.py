"""Finetune Studio: fine-tune torchvision image classifiers, in a desktop app or headless."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"


class _SourceResourcesFinder(importlib.abc.MetaPathFinder):
    """Finds ``studio.resources`` in a source checkout, where it is the top-level resources/.

    Installs (wheel, editable, frozen) map the folder into the package themselves; a checkout
    used straight from its root (``python -m pytest``, ``python -m studio``) has no such map.
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != f"{__name__}.resources":
            return None
        return importlib.util.spec_from_file_location(
            fullname, self._folder / "__init__.py", submodule_search_locations=[str(self._folder)])


def _map_source_resources() -> None:
    package = Path(__file__).resolve().parent
    checkout_resources = package.parent / "resources"
    if (package / "resources").exists() or not (checkout_resources / "__init__.py").is_file():
        return
    if (package.parent / "pyproject.toml").is_file():  # a checkout, not a stray site-packages dir
        sys.meta_path.insert(0, _SourceResourcesFinder(checkout_resources))


_map_source_resources()
