"""The Evaluate page as a person uses it: evaluate a finished run, read the matrix, click a cell
to see its images, sort the metrics, look at the top losses, and predict single images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, QSettings, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtTest import QAbstractItemModelTester
from PySide6.QtWidgets import QFileDialog

from studio.engine.evaluate import Evaluation, evaluate_run
from studio.engine.events import FitEnded, Outcome
from studio.ui.main_window import MainWindow
from studio.ui.models.confusion import COUNT_ROLE, FRACTION_ROLE, SORT_ROLE, ConfusionModel
from studio.ui.models.gallery import LOADED_ROLE, PATH_ROLE
from studio.ui.widgets.evaluate_panel import EvaluatePanel

SYNTHETIC_LABELS = ["ant", "bee", "cat"]


@pytest.fixture()
def panel(qtbot) -> EvaluatePanel:
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    panel.resize(1200, 800)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


@pytest.fixture(scope="module")
def evaluation(trained_run: Path) -> Evaluation:
    return evaluate_run(trained_run)


@pytest.fixture()
def synthetic(tmp_path: Path) -> Evaluation:
    """Three classes whose F1 scores differ: ant is easy, bee is hard, cat in between."""
    targets = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    predicted = [0, 0, 0, 0, 1, 2, 2, 0, 2, 2, 2, 1]
    confidence = [0.9, 0.8, 0.95, 0.7, 0.6, 0.55, 0.9, 0.5, 0.99, 0.65, 0.75, 0.6]
    paths, rows = [], []
    for i, (truth, guess, p) in enumerate(zip(targets, predicted, confidence, strict=True)):
        path = tmp_path / f"{SYNTHETIC_LABELS[truth]}_{i}.png"
        Image.new("RGB", (20, 20), (30 * i, 100, 200 - 10 * i)).save(path)
        paths.append(str(path))
        row = np.full(3, (1 - p) / 2, dtype=np.float32)
        row[guess] = p
        rows.append(row)
    return Evaluation(SYNTHETIC_LABELS, paths, targets, np.stack(rows), source=str(tmp_path),
                      split="all", run_dir=str(tmp_path / "run"), checkpoint="best", epoch=4)


def click_cell(qtbot, panel: EvaluatePanel, row: int, column: int) -> None:
    view = panel.matrix_view
    index = panel.confusion_model.index(row, column)
    view.scrollTo(index)
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton,
                     pos=view.visualRect(index).center())


def gallery_paths(panel: EvaluatePanel) -> list[str]:
    model = panel.gallery_model
    return [model.index(r, 0).data(PATH_ROLE) for r in range(model.rowCount())]


def gallery_captions(panel: EvaluatePanel) -> list[str]:
    model = panel.gallery_model
    return [model.index(r, 0).data() for r in range(model.rowCount())]


def matrix_texts(panel: EvaluatePanel) -> list[list[str]]:
    model = panel.confusion_model
    return [[model.index(r, c).data() for c in range(model.columnCount())]
            for r in range(model.rowCount())]


def metric_column(panel: EvaluatePanel, column: int) -> list:
    proxy = panel.metrics_proxy
    return [proxy.index(r, column).data(SORT_ROLE) for r in range(proxy.rowCount())]


def write_image(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (40, 24), colour).save(path)
    return path


def drop_on(widget, path: Path) -> QDropEvent:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    widget.dropEvent(event)
    return event


def test_evaluate_a_finished_run_and_click_a_cell_to_see_its_images(panel, qtbot,
                                                                    trained_run: Path) -> None:
    assert not panel.evaluate_button.isEnabled()  # nothing to evaluate yet
    panel.set_run_dir(str(trained_run))
    assert panel.evaluate_button.isEnabled() and "Evaluate" in panel.status_label.text()
    with qtbot.waitSignal(panel.evaluation_finished, timeout=60_000) as finished:
        qtbot.mouseClick(panel.evaluate_button, Qt.MouseButton.LeftButton)
    evaluation: Evaluation = finished.args[0]
    assert not panel.progress.isVisible()
    assert evaluation.images == 9

    model = panel.confusion_model
    headers = [model.headerData(c, Qt.Orientation.Horizontal) for c in range(3)]
    assert headers == evaluation.labels == ["blue", "green", "red"]
    counts = [[int(text) for text in row] for row in matrix_texts(panel)]
    assert sum(map(sum, counts)) == 9
    assert counts == evaluation.matrix.tolist()
    assert f"Accuracy {evaluation.accuracy:.1%}" in panel.summary_label.text()
    assert "9 images" in panel.summary_label.text()
    assert "val split" in panel.summary_label.text()

    row, column = np.unravel_index(np.argmax(evaluation.matrix), evaluation.matrix.shape)
    click_cell(qtbot, panel, int(row), int(column))
    expected = evaluation.cell(int(row), int(column))
    assert gallery_paths(panel) == [r.path for r in expected] and expected
    true, predicted = evaluation.labels[row], evaluation.labels[column]
    assert gallery_captions(panel)[0] == f"{true} → {predicted}  {expected[0].confidence:.0%}"
    assert panel.tabs.currentWidget() is panel.images_page
    assert str(len(expected)) in panel.gallery_title.text()
    first = panel.gallery_model.index(0, 0)
    first.data(Qt.ItemDataRole.DecorationRole)  # the view asks for what it paints
    qtbot.waitUntil(lambda: first.data(LOADED_ROLE), timeout=10_000)


def test_a_cell_tooltip_says_what_it_counts(synthetic: Evaluation) -> None:
    model = ConfusionModel()
    QAbstractItemModelTester(model, QAbstractItemModelTester.FailureReportingMode.Fatal)
    model.set_evaluation(synthetic)
    tip = model.index(1, 2).data(Qt.ItemDataRole.ToolTipRole)
    assert tip.startswith("true bee predicted as cat: 2 images")
    assert model.index(0, 0).data(Qt.ItemDataRole.ToolTipRole).startswith(
        "true ant predicted correctly: 4 images")
    model.set_normalised(True)
    model.set_evaluation(None)
    assert model.rowCount() == 0


def test_normalised_shows_row_percentages(panel, qtbot, synthetic: Evaluation) -> None:
    panel.show_evaluation(synthetic)
    assert matrix_texts(panel)[1] == ["1", "1", "2"]
    qtbot.mouseClick(panel.normalised_check, Qt.MouseButton.LeftButton)
    assert panel.normalised_check.isChecked()
    assert matrix_texts(panel) == [["100%", "0%", "0%"], ["25%", "25%", "50%"],
                                   ["0%", "25%", "75%"]]
    model = panel.confusion_model
    for r in range(3):
        assert sum(model.index(r, c).data(FRACTION_ROLE) for c in range(3)) == pytest.approx(1)
    # the darkest cell (most images of its row) has light text, an empty one a muted grey
    dark = model.index(0, 0)
    assert dark.data(Qt.ItemDataRole.ForegroundRole).lightness() > 200
    assert dark.data(Qt.ItemDataRole.BackgroundRole).lightness() < 100
    qtbot.mouseClick(panel.normalised_check, Qt.MouseButton.LeftButton)
    assert matrix_texts(panel)[1] == ["1", "1", "2"]
    assert model.index(1, 2).data(COUNT_ROLE) == 2


def test_sorting_the_metrics_by_a_column_reorders_the_classes(panel, qtbot,
                                                              synthetic: Evaluation) -> None:
    panel.show_evaluation(synthetic)
    assert metric_column(panel, 0) == SYNTHETIC_LABELS
    header = panel.metrics_view.horizontalHeader()
    f1 = 3
    for _ in range(2):  # once, then the other way round
        x = header.sectionViewportPosition(f1) + header.sectionSize(f1) // 2
        qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton,
                         pos=QPoint(x, header.height() // 2))
        values = metric_column(panel, f1)
        descending = header.sortIndicatorOrder() == Qt.SortOrder.DescendingOrder
        assert values == sorted(values, reverse=descending)
        names = metric_column(panel, 0)
        assert names == (["ant", "cat", "bee"] if descending else ["bee", "cat", "ant"])
    # the averages stay below, out of the sort
    averages = panel.averages_table
    assert averages.item(0, 0).text() == "macro avg"
    assert averages.item(0, 3).text() == f"{synthetic.macro.f1:.3f}"
    assert averages.item(1, 4).text() == "12"


def test_top_losses_and_mistakes_fill_the_gallery(panel, qtbot, synthetic: Evaluation) -> None:
    panel.show_evaluation(synthetic)
    assert gallery_paths(panel) == [r.path for r in synthetic.top_losses()]  # shown first
    click_cell(qtbot, panel, 2, 1)
    assert gallery_paths(panel) == [r.path for r in synthetic.cell(2, 1)]
    assert gallery_captions(panel) == ["cat → bee  60%"]
    qtbot.mouseClick(panel.mistakes_button, Qt.MouseButton.LeftButton)
    assert gallery_paths(panel) == [r.path for r in synthetic.misclassified()]
    assert not panel.matrix_view.selectionModel().hasSelection()
    click_cell(qtbot, panel, 0, 1)  # an empty cell
    assert panel.gallery_model.rowCount() == 0
    assert "No image of ant was predicted as bee" in panel.gallery_title.text()
    qtbot.mouseClick(panel.top_losses_button, Qt.MouseButton.LeftButton)
    losses = synthetic.top_losses()
    assert gallery_paths(panel) == [r.path for r in losses]
    assert "Top losses" in panel.gallery_title.text()
    assert losses[0].loss >= losses[-1].loss


def test_predict_a_dropped_image_then_a_broken_file(panel, qtbot, trained_run: Path,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    panel.set_run_dir(str(trained_run))
    red = write_image(tmp_path / "red.png", (220, 30, 30))
    with qtbot.waitSignal(panel.prediction_finished, timeout=60_000) as predicted:
        event = drop_on(panel, red)
    assert event.isAccepted()
    assert predicted.args[0].top[0][0] == "red"
    view = panel.prediction_view
    assert view.shown_classes()[0] == "red" and len(view.shown_classes()) == 3
    assert panel.tabs.currentWidget() is view
    assert view.bars[0].value() >= view.bars[1].value()
    assert "red.png: red" in panel.status_label.text()

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        lambda *args, **kwargs: (str(broken), ""))
    with qtbot.waitSignal(panel.predict_task.failed, timeout=60_000):
        qtbot.mouseClick(panel.predict_button, Qt.MouseButton.LeftButton)
    text = panel.status_label.text()
    assert "broken.jpg cannot be read" in text and text.endswith(".") and "\n" not in text
    assert view.shown_classes() == []
    assert panel.isVisible()


def test_a_folder_of_other_classes_is_a_sentence(panel, qtbot, trained_run: Path,
                                                 tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        write_image(tmp_path / name / "x.png", (10, 10, 10))
    panel.set_run_dir(str(trained_run))
    panel.other_check.setChecked(True)
    panel.other_edit.setText(str(tmp_path))
    with qtbot.waitSignal(panel.evaluate_task.failed, timeout=60_000):
        qtbot.mouseClick(panel.evaluate_button, Qt.MouseButton.LeftButton)
    text = panel.status_label.text()
    assert text.startswith("None of the classes") and "cat" in text
    assert panel.evaluate_button.isEnabled() and not panel.progress.isVisible()


def test_stop_ends_an_evaluation_and_keeps_what_was_shown(panel, qtbot, trained_run: Path,
                                                          tmp_path: Path, make_tiny_dataset,
                                                          synthetic: Evaluation) -> None:
    panel.show_evaluation(synthetic)
    held_out = make_tiny_dataset(tmp_path / "held_out", per_class=100, size=16)  # 5 batches
    panel.set_run_dir(str(trained_run))
    panel.other_edit.setText(str(held_out))
    panel.other_check.setChecked(True)

    def stop_once(done: int, total: int) -> None:
        assert panel.stop_button.isEnabled() and not panel.evaluate_button.isEnabled()
        panel.evaluate_task.progressed.disconnect(stop_once)
        qtbot.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)

    panel.evaluate_task.progressed.connect(stop_once)
    with qtbot.waitSignal(panel.evaluate_task.succeeded, timeout=60_000) as stopped:
        qtbot.mouseClick(panel.evaluate_button, Qt.MouseButton.LeftButton)
    assert stopped.args == [None]
    assert "Evaluation stopped" in panel.status_label.text()
    assert panel.evaluation is synthetic and panel.confusion_model.rowCount() == 3
    assert panel.evaluate_button.isEnabled() and not panel.stop_button.isEnabled()


def test_a_folder_without_checkpoints_cannot_be_evaluated(panel, tmp_path: Path) -> None:
    panel.run_edit.setText(str(tmp_path))
    assert not panel.evaluate_button.isEnabled() and not panel.predict_button.isEnabled()
    panel.start_evaluation()
    assert "has no checkpoint" in panel.status_label.text()
    panel.predict_file(str(tmp_path / "x.png"))
    assert "Choose a trained run folder first" in panel.status_label.text()


@pytest.fixture
def window(qtbot, tmp_path: Path) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    window.show()
    yield window
    window.stop_and_wait()


def test_a_finished_run_fills_the_evaluate_page_and_a_drop_predicts(window, qtbot,
                                                                    trained_run: Path,
                                                                    tmp_path: Path) -> None:
    assert window.PAGES.index("Evaluate") == window.PAGES.index("Train") + 1
    assert window.steps.count() == window.pages.count() == len(window.PAGES)
    result = FitEnded(Outcome.COMPLETED, "finished", 3, 3, 1.0, "val_accuracy",
                      str(trained_run), 1.0)
    window.session.finished.emit(result)
    panel = window.evaluate_panel
    assert panel.run_edit.text() == str(trained_run)
    assert panel.evaluate_button.isEnabled()
    assert window.export_panel.run_edit.text() == str(trained_run)

    window.steps.setCurrentRow(0)  # an image dropped anywhere goes to the Evaluate page
    blue = write_image(tmp_path / "blue.png", (40, 60, 220))
    with qtbot.waitSignal(panel.prediction_finished, timeout=60_000):
        drop_on(window, blue)
    assert window.pages.currentWidget() is panel
    assert panel.prediction_view.shown_classes()[0] == "blue"
