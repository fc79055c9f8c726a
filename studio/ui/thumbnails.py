"""Small pictures of image files: made off the GUI thread (no Qt), shown as pixmaps on it.

The dataset page, the evaluation gallery and the prediction preview all use these.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image
from PySide6.QtGui import QImage, QPixmap

from studio.engine.images import load_image


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """A small RGB picture of one file, as raw bytes a QImage can wrap."""

    label: str
    path: str
    width: int
    height: int
    rgb: bytes


def make_thumbnail(label: str, path: str, size: int) -> Thumbnail | None:
    """Load ``path`` robustly and fit it in ``size`` pixels; small images grow by whole factors
    (pixels stay crisp). None when the file can no longer be read. Safe in any thread."""
    try:
        image = load_image(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    longest = max(image.width, image.height)
    if longest > size:
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
    elif longest * 2 <= size:
        factor = size // longest
        image = image.resize((image.width * factor, image.height * factor),
                             Image.Resampling.NEAREST)
    return Thumbnail(label, path, image.width, image.height, image.tobytes())


def thumbnail_pixmap(thumb: Thumbnail) -> QPixmap:
    """The thumbnail as a pixmap (GUI thread), owning a copy of the pixels."""
    image = QImage(thumb.rgb, thumb.width, thumb.height, 3 * thumb.width,
                   QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(image)
