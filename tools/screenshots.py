"""Render the main window in its main states to PNG files (offscreen by default).

    python tools/screenshots.py [OUT_DIR]        # default docs/screenshots

It opens the demo (bundled sample dataset), waits for the scan and the model description,
visits every step, trains two short epochs, and saves one PNG per state. Look at them: a person
will.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _wait(app: object, condition: object, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        app.processEvents()  # type: ignore[attr-defined]
        time.sleep(0.01)
    if not condition():  # type: ignore[operator]
        raise SystemExit(f"timed out waiting for {condition}")


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    from PySide6.QtCore import QSettings

    from studio.ui.app import build_window, create_app

    app = create_app()
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      tempfile.mkdtemp(prefix="studio-shots-"))
    window = build_window(demo=True)
    window.settings.setValue("paths/runs_dir", tempfile.mkdtemp(prefix="studio-runs-"))
    window.resize(1360, 860)
    window.show()
    project = window.project
    _wait(app, lambda: project.scan is not None and project.description is not None)
    project.update("train", epochs=3)
    shots = {0: "1-dataset.png", 1: "2-backbone.png", 2: "3-layers.png", 3: "4-learning-rates.png"}
    for row, name in shots.items():
        window.steps.setCurrentRow(row)
        _wait(app, lambda: True, 0.3)
        for _ in range(30):
            app.processEvents()
        window.grab().save(str(out / name))
    window.steps.setCurrentRow(4)
    window.training_panel.train_requested.emit()
    _wait(app, lambda: window.session.is_running)
    _wait(app, lambda: window._last_result is not None, 600)
    for _ in range(50):
        app.processEvents()
        time.sleep(0.02)
    window.grab().save(str(out / "5-train.png"))
    window.steps.setCurrentRow(5)
    panel = window.export_panel
    next(b for b in panel.format_group.buttons() if b.property("format") == "onnx").setChecked(True)
    reports: list[object] = []
    panel.export_finished.connect(reports.append)
    panel.start_export()
    _wait(app, lambda: bool(reports) or not panel.progress.isVisible(), 600)
    for _ in range(30):
        app.processEvents()
    window.grab().save(str(out / "6-export.png"))
    print(f"saved {len(shots) + 2} screenshots to {out}")
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
