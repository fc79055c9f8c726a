"""The Evaluate gallery's right-click: relabel or remove an image, and the calibration tab."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from studio.engine.evaluate import Evaluation
from studio.ui.models.gallery import PATH_ROLE
from studio.ui.widgets.evaluate_panel import EvaluatePanel


def _evaluation(root: Path) -> Evaluation:
    """Two classes, two images each, one of them (a/1) confidently called b."""
    paths = []
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            path = root / name / f"{i}.png"
            Image.new("RGB", (8, 8), (60 * i, 90, 200 if name == "a" else 20)).save(path)
            paths.append(str(path))
    probabilities = np.array([[0.9, 0.1], [0.05, 0.95], [0.2, 0.8], [0.3, 0.7]])
    return Evaluation(labels=["a", "b"], paths=paths, targets=np.array([0, 0, 1, 1]),
                      probabilities=probabilities, logits=np.log(probabilities),
                      source=str(root), split="all", checkpoint="best")


def test_a_mistake_relabelled_from_the_gallery_moves_the_file_and_says_so(
        qtbot, tmp_path: Path) -> None:
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    root = tmp_path / "data"
    panel.show_evaluation(_evaluation(root))
    model = panel.gallery_view.model()
    index = next(model.index(row, 0) for row in range(model.rowCount())
                 if model.index(row, 0).data(PATH_ROLE).endswith("a/1.png"))
    menu = panel.gallery_menu(index)
    relabel = next(a for a in menu.actions() if a.text() == "&Relabel as").menu()
    with qtbot.waitSignal(panel.dataset_changed) as blocker:
        next(a for a in relabel.actions() if a.text() == "b").trigger()
    assert blocker.args == [str(root)]
    assert not (root / "a" / "1.png").exists() and (root / "b" / "1 (1).png").is_file()
    assert "evaluate again" in panel.status_label.text()
    assert (root / ".studio-journal.jsonl").is_file()


def test_the_calibration_tab_shows_the_evaluations_calibration(qtbot, tmp_path: Path) -> None:
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    evaluation = _evaluation(tmp_path / "data")
    panel.show_evaluation(evaluation)
    assert panel.tabs.tabText(2) == "Calibration"
    text = panel.calibration_view.summary_label.text()
    assert f"{evaluation.calibration.temperature:.2f}" in text.replace(",", "")
