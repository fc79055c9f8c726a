"""DatasetPanel as a user meets it: choose a folder, watch the scan, read what it found.

Every dataset is a few 8×8 PNGs written into tmp_path; waits are on signals or conditions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QListWidget,
    QTableWidget,
    QTreeWidget,
)

from studio.engine.config import DataConfig, RunConfig
from studio.ui.project import ProjectModel
from studio.ui.widgets.dataset_panel import DatasetPanel

SCAN_TIMEOUT = 10_000  # ms; a scan of these folders takes a fraction of a second


def write_class(root: Path, name: str, count: int) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (40 * i % 256, 90, 200)).save(folder / f"{name}_{i:02d}.png")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """apple and banana with 8 images each, cherry with 2 (imbalanced), one broken file."""
    root = tmp_path / "fruit"
    write_class(root, "apple", 8)
    write_class(root, "banana", 8)
    write_class(root, "cherry", 2)
    (root / "apple" / "broken.png").write_bytes(b"this is not a png")
    (root / "empty").mkdir()
    return root


@pytest.fixture
def project() -> ProjectModel:
    return ProjectModel(RunConfig())


@pytest.fixture
def panel(qtbot, project: ProjectModel) -> DatasetPanel:
    widget = DatasetPanel(project)
    qtbot.addWidget(widget)
    widget.resize(900, 650)
    widget.show()
    return widget


def child(panel: DatasetPanel, kind: type, name: str):
    widget = panel.findChild(kind, name)
    assert widget is not None, name
    return widget


def table_rows(table: QTableWidget) -> dict[str, list[int]]:
    """{class: [counts…]} as the table shows them, plus the header under "header"."""
    rows: dict[str, list] = {"header": [table.horizontalHeaderItem(c).text()
                                        for c in range(table.columnCount())]}
    for row in range(table.rowCount()):
        rows[table.item(row, 0).text()] = [int(table.item(row, c).text())
                                           for c in range(1, table.columnCount())]
    return rows


def load(qtbot, panel: DatasetPanel, folder: Path | str):
    with qtbot.waitSignal(panel.scan_finished, timeout=SCAN_TIMEOUT) as blocker:
        panel.load_folder(str(folder))
    return blocker.args[0]


def test_empty_panel_invites_a_folder(panel: DatasetPanel) -> None:
    hint = child(panel, QLabel, "empty_hint")
    assert hint.isVisible()
    assert "one subfolder per class" in hint.text()
    assert not child(panel, QTableWidget, "class_table").isVisible()


def test_scan_fills_table_warnings_skipped_and_project(qtbot, panel, project, dataset) -> None:
    scan = load(qtbot, panel, dataset)

    assert project.scan is scan
    assert project.config.data.root == str(dataset)
    rows = table_rows(child(panel, QTableWidget, "class_table"))
    assert rows["header"] == ["Class", "Train", "Val", "Total"]
    assert rows["apple"] == [6, 2, 8]  # the broken file is not counted
    assert rows["cherry"] == [1, 1, 2]
    assert set(rows) == {"header", "apple", "banana", "cherry"}
    assert not child(panel, QLabel, "empty_hint").isVisible()

    warnings = child(panel, QListWidget, "warning_list")
    texts = [warnings.item(i).text() for i in range(warnings.count())]
    assert any("imbalanced" in t and "cherry" in t for t in texts)
    assert any("'empty'" in t for t in texts)
    assert all(not warnings.item(i).icon().isNull() for i in range(warnings.count()))

    skipped = child(panel, QTreeWidget, "skipped_files")
    assert skipped.topLevelItemCount() == 1
    item = skipped.topLevelItem(0)
    assert item.text(0) == str(Path("apple") / "broken.png")
    assert "not an image" in item.text(1)
    assert "1 skipped" in child(panel, QLabel, "scan_summary").text()


def test_thumbnails_arrive_labelled_by_class(qtbot, panel, dataset) -> None:
    load(qtbot, panel, dataset)
    thumbnails = child(panel, QListWidget, "thumbnail_list")
    qtbot.waitUntil(lambda: thumbnails.count() == 4 + 4 + 2, timeout=SCAN_TIMEOUT)
    labels = [thumbnails.item(i).text() for i in range(thumbnails.count())]
    assert labels == ["apple"] * 4 + ["banana"] * 4 + ["cherry"] * 2
    assert all(not thumbnails.item(i).icon().isNull() for i in range(thumbnails.count()))


def test_an_example_relabelled_from_its_menu_moves_and_the_counts_follow(
        qtbot, panel, project, dataset) -> None:
    load(qtbot, panel, dataset)
    thumbnails = child(panel, QListWidget, "thumbnail_list")
    qtbot.waitUntil(lambda: thumbnails.count() == 10, timeout=SCAN_TIMEOUT)
    item = thumbnails.item(0)  # an apple
    source = Path(item.toolTip())
    menu = panel._results_page.example_menu(item)
    relabel = next(a for a in menu.actions() if a.text() == "&Relabel as").menu()
    banana = next(a for a in relabel.actions() if a.text() == "banana")
    with qtbot.waitSignal(panel.scan_finished, timeout=SCAN_TIMEOUT) as blocker:
        banana.trigger()
    assert not source.exists() and (dataset / "banana" / source.name).is_file()
    counts = blocker.args[0].counts()
    assert sum(counts[split]["banana"] for split in counts) == 9  # rescanned: 8 + 1
    assert (dataset / ".studio-journal.jsonl").is_file()  # undo is one command away


def test_bad_folder_says_why_and_keeps_the_previous_scan(qtbot, panel, project, dataset,
                                                         tmp_path) -> None:
    scan = load(qtbot, panel, dataset)
    message = child(panel, QLabel, "scan_message")
    assert not message.isVisible()

    with qtbot.assertNotEmitted(panel.scan_finished, wait=0):
        panel.load_folder(str(tmp_path / "no such folder"))
        qtbot.waitUntil(message.isVisible, timeout=SCAN_TIMEOUT)
    assert "does not exist" in message.text()
    assert message.text()[0].isupper() and message.text().endswith(".")
    assert project.scan is scan
    assert project.config.data.root == str(dataset)
    assert table_rows(child(panel, QTableWidget, "class_table"))["apple"] == [6, 2, 8]


def test_single_class_folder_is_refused_with_a_sentence(qtbot, panel, tmp_path) -> None:
    write_class(tmp_path / "one", "only", 3)
    panel.load_folder(str(tmp_path / "one"))
    message = child(panel, QLabel, "scan_message")
    qtbot.waitUntil(message.isVisible, timeout=SCAN_TIMEOUT)
    assert "at least two class folders" in message.text()
    assert child(panel, QLabel, "empty_hint").isVisible()


def test_val_fraction_change_rescans_once_debounced(qtbot, panel, project, dataset) -> None:
    load(qtbot, panel, dataset)
    spin = child(panel, QDoubleSpinBox, "val_fraction_spin")
    with qtbot.waitSignal(panel.scan_finished, timeout=SCAN_TIMEOUT) as blocker:
        for value in (0.3, 0.4, 0.5):  # a user stepping the spin box quickly
            spin.setValue(value)
    assert project.config.data.val_fraction == 0.5
    scan = blocker.args[0]
    assert scan.counts()["val"]["apple"] == 4  # the first rescan already used 0.5
    assert project.scan is scan
    assert table_rows(child(panel, QTableWidget, "class_table"))["apple"] == [4, 4, 8]


def test_augment_and_balance_write_the_config(panel, project) -> None:
    augment = child(panel, QComboBox, "augment_combo")
    balance = child(panel, QComboBox, "balance_combo")
    augment.setCurrentIndex(augment.findData("strong"))
    balance.setCurrentIndex(balance.findData("loss"))
    assert project.config.data.augment == "strong"
    assert project.config.data.balance == "loss"
    assert all(augment.itemData(i, Qt.ItemDataRole.ToolTipRole) for i in range(augment.count()))


def test_opened_config_sets_widgets_and_scans_without_writing_back(qtbot, panel, project,
                                                                   dataset) -> None:
    changes: list[object] = []
    project.config_changed.connect(changes.append)
    config = RunConfig(data=DataConfig(root=str(dataset), val_fraction=0.25, augment="light",
                                       balance="sampler"))
    with qtbot.waitSignal(panel.scan_finished, timeout=SCAN_TIMEOUT):
        project.set_config(config)

    assert child(panel, QDoubleSpinBox, "val_fraction_spin").value() == 0.25
    assert child(panel, QComboBox, "augment_combo").currentData() == "light"
    assert child(panel, QComboBox, "balance_combo").currentData() == "sampler"
    assert project.config == config
    assert changes == [config]  # showing the config and scanning it wrote nothing back
    assert project.scan is not None and project.scan.root == str(dataset)


def test_a_folder_dropped_on_the_panel_is_scanned(qtbot, panel, project, dataset) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(dataset))])
    enter = QDragEnterEvent(QPoint(20, 20), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    panel.dragEnterEvent(enter)
    assert enter.isAccepted()

    drop = QDropEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime,
                      Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(panel.scan_finished, timeout=SCAN_TIMEOUT):
        panel.dropEvent(drop)
    assert project.scan is not None and project.scan.root == str(dataset)


def test_a_dropped_file_is_left_for_the_window(panel, dataset) -> None:
    image = next(dataset.rglob("*.png"))
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(image))])
    enter = QDragEnterEvent(QPoint(20, 20), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    panel.dragEnterEvent(enter)
    assert not enter.isAccepted()  # it propagates to the window, which predicts it


def test_dragged_text_is_refused(panel) -> None:
    mime = QMimeData()
    mime.setText("just some text")
    enter = QDragEnterEvent(QPoint(20, 20), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    panel.dragEnterEvent(enter)
    assert not enter.isAccepted()


def test_split_layout_shows_a_test_column(qtbot, panel, tmp_path) -> None:
    root = tmp_path / "split"
    for split, count in (("train", 4), ("val", 2), ("test", 1)):
        write_class(root / split, "cat", count)
        write_class(root / split, "dog", count)
    load(qtbot, panel, root)
    rows = table_rows(child(panel, QTableWidget, "class_table"))
    assert rows["header"] == ["Class", "Train", "Val", "Test", "Total"]
    assert rows["cat"] == [4, 2, 1, 7]


def test_every_setting_explains_itself(panel) -> None:
    for name in ("folder_edit", "browse_button", "rescan_button", "val_fraction_spin",
                 "augment_combo", "balance_combo"):
        widget = panel.findChild(object, name)
        assert widget is not None and widget.toolTip(), name
