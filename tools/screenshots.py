"""Render the main window in its main states to PNG files (offscreen by default).

    python tools/screenshots.py [OUT_DIR]        # default docs/screenshots

It opens the demo (bundled sample dataset), waits for the scan and the model description,
visits every step, sweeps the learning rate, trains three short epochs, evaluates the run (a
confused cell's images, then one prediction), exports it, and saves one PNG per state. Look at
them: a person will.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _wait(app: object, condition: object, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        app.processEvents()  # type: ignore[attr-defined]
        time.sleep(0.01)
    if not condition():  # type: ignore[operator]
        raise SystemExit(f"timed out waiting for {condition}")


def _settle(app: object, rounds: int = 30) -> None:
    for _ in range(rounds):
        app.processEvents()  # type: ignore[attr-defined]
        time.sleep(0.02)


def open_window(demo: bool = True, runs_dir: str = "", height: int = 860) -> tuple[Any, Any]:
    """The app and its main window (on the demo), shown at the screenshots' size, with its
    settings and runs folder in temporary folders so nothing of the user's is read or written.
    On the demo, it returns once the sample is scanned and the backbone described. Every
    screenshot tool starts here."""
    from PySide6.QtCore import QSettings

    from studio.ui.app import build_window, create_app

    app = create_app()
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      tempfile.mkdtemp(prefix="studio-shots-"))
    window = build_window(demo=demo)
    window.settings.setValue("paths/runs_dir",
                             runs_dir or tempfile.mkdtemp(prefix="studio-runs-"))
    window.resize(1360, height)
    window.show()
    if demo:  # the sample is scanned and the backbone described before any tool goes on
        _wait(app, lambda: window.project.scan is not None
              and window.project.description is not None)
    return app, window


def _evaluate(app: object, window: object, out: Path) -> None:
    """Evaluate the run just trained, open its most confused cell, then predict one image."""
    import numpy as np

    window.steps.setCurrentRow(window.PAGES.index("Evaluate"))  # type: ignore[attr-defined]
    panel = window.evaluate_panel  # type: ignore[attr-defined]
    done: list[object] = []
    panel.evaluation_finished.connect(done.append)
    panel.start_evaluation()
    _wait(app, lambda: bool(done) or not panel.evaluate_task.running, 600)
    evaluation = panel.evaluation
    if evaluation is not None:
        off = evaluation.matrix.copy()
        np.fill_diagonal(off, -1)
        row, column = np.unravel_index(int(np.argmax(off)), off.shape)
        if off[row, column] <= 0:
            row = column = 0
        panel.matrix_view.setCurrentIndex(panel.confusion_model.index(int(row), int(column)))
        _wait(app, lambda: not panel.gallery_model.loading, 60)
    _settle(app)
    window.grab().save(str(out / "6-evaluate.png"))  # type: ignore[attr-defined]
    if evaluation is not None:
        predicted: list[object] = []
        panel.prediction_finished.connect(predicted.append)
        panel.predict_file(evaluation.paths[0])
        _wait(app, lambda: bool(predicted) or not panel.predict_task.running, 120)
        _settle(app)
        window.grab().save(str(out / "6b-evaluate-predict.png"))  # type: ignore[attr-defined]


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    app, window = open_window()
    project = window.project
    project.update("train", epochs=3)
    shots = {0: "1-dataset.png", 1: "2-backbone.png", 2: "3-layers.png", 3: "4-learning-rates.png"}
    for row, name in shots.items():
        window.steps.setCurrentRow(row)
        _wait(app, lambda: True, 0.3)
        for _ in range(30):
            app.processEvents()
        window.grab().save(str(out / name))
    finder = window.lr_panel.open_finder()
    finder.finder.steps_spin.setValue(80)
    finder.finder.start()
    _wait(app, lambda: finder.finder.result is not None
          or finder.finder.error_label.isVisible(), 600)
    _settle(app)
    finder.grab().save(str(out / "4b-lr-finder.png"))
    finder.close()
    window.steps.setCurrentRow(window.PAGES.index("Train"))
    window.training_panel.train_requested.emit()
    _wait(app, lambda: window.session.is_running)
    _wait(app, lambda: window._last_result is not None, 600)
    for _ in range(50):
        app.processEvents()
        time.sleep(0.02)
    window.grab().save(str(out / "5-train.png"))
    _evaluate(app, window, out)
    window.steps.setCurrentRow(window.PAGES.index("Export"))
    panel = window.export_panel
    next(b for b in panel.format_group.buttons() if b.property("format") == "onnx").setChecked(True)
    reports: list[object] = []
    panel.export_finished.connect(reports.append)
    panel.start_export()
    _wait(app, lambda: bool(reports) or not panel.progress.isVisible(), 600)
    for _ in range(30):
        app.processEvents()
    window.grab().save(str(out / "7-export.png"))
    print(f"saved {len(shots) + 5} screenshots to {out}")
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
