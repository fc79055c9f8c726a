"""Render the app icon's PNG sizes from its SVG with Qt's own SVG renderer.

Run it after changing ``resources/icons/finetune-studio.svg``; the PNGs are committed, so the
app, the wheel and the desktop entry never need an SVG renderer at run time::

    QT_QPA_PLATFORM=offscreen python packaging/render_icons.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"
NAME = "finetune-studio"
SIZES = (16, 32, 48, 64, 128, 256, 512)  # keep in step with resources.ICON_SIZES


def render(svg: Path, size: int, out: Path) -> None:
    """Draw ``svg`` into a transparent ``size``-pixel square and save it as PNG."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg} is not an SVG Qt can draw; fix the file and run this again.")
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    if not image.save(str(out), "PNG"):
        raise SystemExit(f"could not write {out}; check that the folder is writable.")


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 - fonts, paint
    svg = ICONS / f"{NAME}.svg"
    for size in SIZES:
        out = ICONS / f"{NAME}-{size}.png"
        render(svg, size, out)
        print(f"{out.relative_to(ICONS.parents[1])}: {size}×{size}, {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
