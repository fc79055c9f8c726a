"""Package data shipped as ``studio.resources``: the sample dataset, the app icon, the style sheet.

The folder lies at the top of the repository, beside ``studio/``; pyproject.toml maps it into
the package (``package-dir``), so a wheel, an editable install and a frozen app all find it
through :mod:`importlib.resources` and nothing here spells a path relative to the source tree.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

ICON_NAME = "finetune-studio"
ICON_SIZES = (16, 32, 48, 64, 128, 256, 512)


def _files() -> Traversable:
    return resources.files(__name__)


def _path(item: Traversable) -> Path:
    """A real file-system path: Qt, Pillow and the engine open files by name."""
    return Path(str(item))


def sample_dataset() -> Path:
    """The folder of the bundled handwritten-digits sample (see its PROVENANCE.md)."""
    return _path(_files() / "sample_digits")


def icon_svg() -> Path:
    """The app icon as SVG, the source every PNG size is rendered from."""
    return _path(_files() / "icons" / f"{ICON_NAME}.svg")


def icon_path(size: int) -> Path:
    """The app icon as a ``size`` × ``size`` PNG; ``size`` is one of :data:`ICON_SIZES`."""
    if size not in ICON_SIZES:
        sizes = ", ".join(map(str, ICON_SIZES))
        raise ValueError(f"there is no {size} px app icon; the sizes are {sizes}.")
    return _path(_files() / "icons" / f"{ICON_NAME}-{size}.png")


def style_sheet() -> str:
    """The Qt style sheet the app applies on top of the Fusion style."""
    return (_files() / "style.qss").read_text(encoding="utf-8")
