"""The Check tab as a user meets it: check a folder, read the findings, relabel, remove, undo,
and watch the counts follow."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PySide6.QtWidgets import QMenu, QTreeWidgetItem

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from doctor_data import write_planted  # noqa: E402

from studio.engine.config import RunConfig  # noqa: E402
from studio.ui.cleaning import add_cleaning_actions  # noqa: E402
from studio.ui.project import ProjectModel  # noqa: E402
from studio.ui.widgets.dataset_panel import DatasetPanel  # noqa: E402
from studio.ui.widgets.doctor_view import PATH  # noqa: E402

pytest.importorskip("imagehash")
TIMEOUT = 15_000


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    return write_planted(tmp_path / "data")


@pytest.fixture
def panel(qtbot, planted: Path) -> DatasetPanel:
    widget = DatasetPanel(ProjectModel(RunConfig()))
    qtbot.addWidget(widget)
    widget.resize(1000, 700)
    widget.show()
    with qtbot.waitSignal(widget.scan_finished, timeout=TIMEOUT):
        widget.load_folder(str(planted))
    return widget


def file_rows(view: object) -> dict[str, QTreeWidgetItem]:
    """File rows as "<kind>:<relative path>" (the first row of each, where a file is listed
    under several findings of one kind)."""
    tree = view.findChild(object, "findings_tree")  # type: ignore[attr-defined]
    rows: dict[str, QTreeWidgetItem] = {}

    def walk(item: QTreeWidgetItem, kind: str) -> None:
        for i in range(item.childCount()):
            child = item.child(i)
            if child.data(0, PATH):
                rows.setdefault(f"{kind}:{child.text(0)}", child)
            walk(child, kind)

    for i in range(tree.topLevelItemCount()):
        top = tree.topLevelItem(i)
        walk(top, top.text(0).split(" (")[0])
    return rows


def checked(qtbot, panel: DatasetPanel) -> object:
    view = panel.doctor_view
    with qtbot.waitSignal(view.check_finished, timeout=TIMEOUT):
        view.findChild(object, "check_button").click()
    return view


def test_check_lists_every_kind_with_counts(qtbot, panel: DatasetPanel) -> None:
    view = checked(qtbot, panel)
    tree = view.findChild(object, "findings_tree")
    titles = [tree.topLevelItem(i).text(0) for i in range(tree.topLevelItemCount())]
    assert titles == ["Leaks (1)", "Conflicts (1)", "Suspected label errors (0)",
                      "Exact duplicates (3)", "Near-duplicates (1)",
                      "Tiny or elongated images (2)"]
    leak = tree.topLevelItem(0).child(0)
    assert [leak.child(i).text(0) for i in range(leak.childCount())] == [
        "train/a/leak.png", "val/a/leak.png"]
    assert "33 images checked" in view.findChild(object, "check_summary").text()
    qtbot.waitUntil(lambda: not leak.child(0).icon(0).isNull(), timeout=TIMEOUT)


def test_relabel_remove_and_undo_rescan_and_update_the_counts(qtbot, panel: DatasetPanel,
                                                              planted: Path) -> None:
    view = checked(qtbot, panel)
    conflict = file_rows(view)["Conflicts:train/b/both.png"]
    conflict.setSelected(True)
    assert view.findChild(object, "remove_button").isEnabled()
    with qtbot.waitSignal(panel.scan_finished, timeout=TIMEOUT):
        changes = view.relabel_selected("c")
    assert [c.target for c in changes] == ["train/c/both.png"]
    assert panel.scan.counts()["train"]["b"] == 6 and panel.scan.counts()["train"]["c"] == 7
    assert "relabelled" in conflict.text(2) and conflict.font(0).strikeOut()
    assert view.report is not None  # a rescan of the same folder keeps the findings

    tiny = file_rows(view)["Tiny or elongated images:train/c/tiny.png"]
    tiny.setSelected(True)
    with qtbot.waitSignal(panel.scan_finished, timeout=TIMEOUT):
        view.remove_selected()
    assert (planted / ".studio-trash/train/c/tiny.png").is_file()
    assert panel.scan.counts()["train"]["c"] == 6

    for _ in range(2):
        with qtbot.waitSignal(panel.scan_finished, timeout=TIMEOUT):
            view.undo_last()
    assert panel.scan.counts()["train"] == {"a": 7, "b": 7, "c": 6}
    assert not conflict.font(0).strikeOut() and conflict.text(2) == ""

    with qtbot.waitSignal(panel.scan_finished, timeout=TIMEOUT):
        panel.findChild(object, "rescan_button").click()  # the folder may have changed
    assert view.report is None


def test_a_failed_relabel_is_one_sentence_under_the_list(qtbot, panel: DatasetPanel,
                                                         planted: Path) -> None:
    view = checked(qtbot, panel)
    row = file_rows(view)["Tiny or elongated images:train/c/tiny.png"]
    row.setSelected(True)
    (planted / "train/c/tiny.png").unlink()  # gone behind the app's back
    view.remove_selected()
    message = view.findChild(object, "check_message")
    assert message.isVisibleTo(view) and "does not exist" in message.text()


def test_the_menu_helper_offers_every_class_and_remove(qtbot, planted: Path) -> None:
    menu = QMenu()
    changed: list[object] = []
    actions = add_cleaning_actions(menu, str(planted), [str(planted / "train/a/a0.png")],
                                   changed=changed.append)
    texts = [a.text() for a in actions]
    assert texts == ["&Relabel as", "a", "b", "c", "Re&move from dataset"]
    assert not actions[1].isEnabled()  # already in class a
    actions[2].trigger()
    assert (planted / "train/b/a0.png").is_file()
    assert [c[0].target for c in changed] == ["train/b/a0.png"]
