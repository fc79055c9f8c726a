"""The Runs page: the run history as a person sees it, compared, renamed, trashed, re-run.

Run folders are written by hand (config.toml, metrics.jsonl, run.json): no training, except one
real re-run through the window to check that run.json records what it repeats.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PySide6.QtCore import QItemSelectionModel, QSettings, Qt
from PySide6.QtWidgets import QInputDialog, QMessageBox

from studio.engine.config import (
    DataConfig,
    FreezeSpec,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from studio.engine.history import run_config
from studio.engine.record import RECORD_FORMAT, this_process
from studio.ui.models.runs_model import BEST, NAME, STATUS, STATUS_COLORS
from studio.ui.project import ProjectModel
from studio.ui.widgets.runs_panel import FOLDERS_KEY, RunsPanel

NOW = time.time()


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def tiny_config(data: Path, lr: float = 1e-3, **changes: Any) -> RunConfig:
    return RunConfig(
        data=DataConfig(root=str(data), image_size=32, augment="none", val_fraction=0.3),
        model=ModelConfig(backbone="mobilenet_v3_small", weights="none"),
        optim=OptimConfig(lr=lr, schedule="none"),
        train=TrainConfig(epochs=3, batch_size=8, workers=0, precision="fp32", device="cpu",
                          seed=0)).replace(**changes)


def write_run(root: Path, name: str, config: RunConfig, accuracies: list[float], *,
              end: dict[str, Any] | None, started: float, pid: int | None = None,
              checkpoint: bool = False) -> Path:
    """A run folder as the trainer leaves it, without training."""
    run = root / name
    run.mkdir(parents=True)
    config.save(run / "config.toml")
    lines = [{"event": "fit_start", "start_epoch": 1, "epochs": config.train.epochs,
              "device": "cpu", "time": started}]
    best = max(accuracies, default=0.0)
    for epoch, acc in enumerate(accuracies, start=1):
        lines.append({"event": "epoch", "epoch": epoch, "train_loss": 1.5 - 0.2 * epoch,
                      "train_acc": acc * 0.9, "val_loss": 1.6 - 0.2 * epoch, "val_acc": acc,
                      "lr": {"default": config.optim.lr}, "seconds": 2.0,
                      "best": acc == best})
    if end is not None:
        lines.append({"event": "fit_end", "seconds": 2.0 * len(accuracies),
                      "time": started + 10, **end})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    process = {**this_process(), "started": started}
    if pid is not None:
        process["pid"] = pid
    record = {"format": RECORD_FORMAT, "version": 1, "studio": "0.1.0", "python": "3.11.0",
              "torch": "2.13.0", "torchvision": "0.28.0", "cuda": None, "cudnn": None,
              "device": "cpu", "device_name": "Test CPU", "precision": "fp32",
              "seed": config.train.seed, "deterministic": False, "command": "app",
              "processes": 1, "process": process, "rerun_of": None,
              "dataset": {"root": config.data.root, "splits": {"train": 21, "val": 9},
                          "classes": ["blue", "green", "red"],
                          "fingerprint": {"hash": "0" * 64, "files": 30}},
              "sessions": [process]}
    (run / "run.json").write_text(json.dumps(record))
    if checkpoint:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.pt").write_bytes(b"")
    return run


@pytest.fixture
def runs_root(tmp_path: Path, tiny_dataset: Path) -> Path:
    """alpha completed (80 %), beta failed (45 %, lr 0.01), gamma interrupted (9.5 %)."""
    root = tmp_path / "runs"
    write_run(root, "alpha", tiny_config(tiny_dataset), [0.5, 0.8, 0.7], started=NOW - 3000,
              end={"outcome": "completed", "message": "completed 3 epochs",
                   "best_metric": 0.8, "best_epoch": 2})
    write_run(root, "beta", tiny_config(tiny_dataset, lr=0.01,
                                        freeze=FreezeSpec(preset="head_only")),
              [0.45], started=NOW - 2000,
              end={"outcome": "failed", "message": "the loss became NaN at epoch 2",
                   "best_metric": 0.45, "best_epoch": 1})
    write_run(root, "gamma", tiny_config(tmp_path / "digits").replace(
        model=ModelConfig(backbone="resnet18", weights="none")), [0.095],
        started=NOW - 1000, end=None, pid=dead_pid(), checkpoint=True)
    return root


@pytest.fixture
def settings(tmp_path: Path, runs_root: Path) -> QSettings:
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("paths/runs_dir", str(runs_root))
    return settings


@pytest.fixture
def panel(qtbot, settings: QSettings) -> RunsPanel:
    panel = RunsPanel(ProjectModel(), settings)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.runs_listed, timeout=10_000):
        panel.show()  # a shown page lists its runs
    return panel


def names(panel: RunsPanel) -> list[str]:
    """The names in the table, top to bottom, as shown."""
    return [panel.proxy.index(row, NAME).data() for row in range(panel.proxy.rowCount())]


def select(panel: RunsPanel, qtbot, *wanted: str) -> None:
    """Click the first run, Ctrl+click the others."""
    selection = panel.table.selectionModel()
    for number, name in enumerate(wanted):
        row = names(panel).index(name)
        flag = QItemSelectionModel.SelectionFlag.ClearAndSelect if number == 0 \
            else QItemSelectionModel.SelectionFlag.Select
        selection.select(panel.proxy.index(row, 0), flag | QItemSelectionModel.SelectionFlag.Rows)
    qtbot.waitUntil(lambda: panel.comparison.legend_names() == list(wanted), timeout=5_000)


def test_the_table_lists_every_run_with_its_status(panel: RunsPanel) -> None:
    statuses = {panel.proxy.index(row, NAME).data(): panel.proxy.index(row, STATUS)
                for row in range(panel.proxy.rowCount())}
    assert {name: index.data() for name, index in statuses.items()} == {
        "alpha": "completed", "beta": "failed", "gamma": "interrupted"}
    assert statuses["beta"].data(Qt.ItemDataRole.ForegroundRole) == STATUS_COLORS["failed"]
    assert "NaN" in statuses["beta"].data(Qt.ItemDataRole.ToolTipRole)
    assert names(panel) == ["gamma", "beta", "alpha"]  # newest first
    assert panel.count_label.text() == "3 runs"


def test_sorting_by_best_metric_orders_by_value_not_text(panel: RunsPanel) -> None:
    panel.table.sortByColumn(BEST, Qt.SortOrder.AscendingOrder)
    assert [panel.proxy.index(r, BEST).data() for r in range(3)] == [
        "acc 9.5 % @1", "acc 45.0 % @1", "acc 80.0 % @2"]  # as text, 9.5 would come last
    panel.table.sortByColumn(BEST, Qt.SortOrder.DescendingOrder)
    assert names(panel) == ["alpha", "beta", "gamma"]


def test_the_filter_hides_rows_that_do_not_match(panel: RunsPanel) -> None:
    panel.filter_edit.setText("failed")
    assert names(panel) == ["beta"]
    panel.filter_edit.setText("RESNET")  # backbone, any case
    assert names(panel) == ["gamma"]
    panel.filter_edit.setText("digits")  # dataset folder
    assert names(panel) == ["gamma"]
    assert panel.count_label.text() == "1 of 3 runs"
    panel.filter_edit.clear()
    assert len(names(panel)) == 3


def test_two_selected_runs_overlay_their_curves_and_diff_their_settings(
        panel: RunsPanel, qtbot, runs_root: Path) -> None:
    select(panel, qtbot, "alpha", "beta")
    comparison = panel.comparison
    for key in ("loss", "accuracy", "lr"):
        assert {path.name for path, _ in comparison.curves[key]} == {"alpha", "beta"}
    assert len(comparison.curves["loss"]) == 4  # validation and training, per run
    assert "alpha" in comparison.legend_label.text() and "beta" in comparison.legend_label.text()

    top = comparison.details.topLevelItem(0)
    assert top.text(0) == "beta vs alpha: 2 settings differ"
    changes = {top.child(i).text(0): top.child(i).text(1) for i in range(top.childCount())}
    assert changes["optim.lr"] == "0.001 → 0.01"
    assert changes["freeze.preset"] == "train_all → head_only"
    assert not panel.rename_action.isEnabled()  # one run at a time
    assert panel.delete_action.text() == "Delete 2…"

    select(panel, qtbot, "alpha")
    facts = comparison.details
    rows = {facts.topLevelItem(t).child(c).text(0): facts.topLevelItem(t).child(c).text(1)
            for t in range(facts.topLevelItemCount())
            for c in range(facts.topLevelItem(t).childCount())}
    assert rows["torch"] == "2.13.0" and rows["seed"] == "0" and rows["precision"] == "fp32"
    assert len(comparison.curves["loss"]) == 2


def test_the_same_settings_say_no_differences(panel: RunsPanel, qtbot, runs_root: Path,
                                              tiny_dataset: Path) -> None:
    write_run(runs_root, "alpha-again", tiny_config(tiny_dataset), [0.6], started=NOW,
              end={"outcome": "completed", "best_metric": 0.6, "best_epoch": 1})
    with qtbot.waitSignal(panel.runs_listed, timeout=10_000):
        panel.refresh_button.click()
    select(panel, qtbot, "alpha", "alpha-again")
    assert panel.comparison.details.topLevelItem(0).child(0).text(0) == "no differences"


def test_rename_and_delete_update_the_table(panel: RunsPanel, qtbot, runs_root: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "send2trash", None)  # never the user's real trash
    monkeypatch.setattr(QInputDialog, "getText", lambda *args, **kwargs: ("alpha-2", True))
    select(panel, qtbot, "alpha")
    with qtbot.waitSignal(panel.runs_listed, timeout=10_000):
        panel.rename_action.trigger()
    assert "alpha-2" in names(panel) and "alpha" not in names(panel)
    assert [run.name for run in panel.selected_runs()] == ["alpha-2"]  # still selected

    monkeypatch.setattr(QInputDialog, "getText", lambda *args, **kwargs: ("beta", True))
    panel.rename_action.trigger()
    assert "already exists" in panel.message_label.text()

    asked: list[str] = []

    def answer_yes(parent: object, title: str, text: str, *args: object) -> object:
        asked.append(text)
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", answer_yes)
    select(panel, qtbot, "beta")
    with qtbot.waitSignal(panel.runs_listed, timeout=10_000):
        panel.delete_action.trigger()
    assert "beta" in asked[0] and "trash" in asked[0]
    assert sorted(names(panel)) == ["alpha-2", "gamma"]
    assert [p.name.startswith("beta-") for p in (runs_root / ".trash").iterdir()] == [True]
    assert "Moved beta to the trash" in panel.message_label.text()


def test_load_settings_puts_the_run_config_into_the_project(panel: RunsPanel, qtbot) -> None:
    select(panel, qtbot, "beta")
    with qtbot.waitSignal(panel.settings_loaded, timeout=5_000):
        panel.load_action.trigger()
    assert panel._project.config.optim.lr == pytest.approx(0.01)
    assert panel._project.config.freeze.preset == "head_only"


def test_rerun_says_what_changed_and_asks_first(panel: RunsPanel, qtbot, runs_root: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def answer_yes(parent: object, title: str, text: str, *args: object) -> object:
        asked.append(text)
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", answer_yes)
    select(panel, qtbot, "alpha")
    with qtbot.waitSignal(panel.rerun_requested, timeout=20_000) as requested:
        panel.rerun_action.trigger()
    assert requested.args[0] == str(runs_root / "alpha")
    assert requested.args[1] == run_config(runs_root / "alpha")
    assert f"torch 2.13.0 → {torch.__version__}" in asked[0]
    assert "the dataset changed since this run" in asked[0].lower()
    assert asked[0].endswith("Re-run anyway?")


def test_rerun_of_a_run_whose_dataset_is_gone_is_one_sentence(panel: RunsPanel, qtbot) -> None:
    select(panel, qtbot, "gamma")  # its dataset folder "digits" does not exist
    panel.rerun_action.trigger()
    qtbot.waitUntil(lambda: "cannot be re-run" in panel.message_label.text(), timeout=10_000)
    assert "Traceback" not in panel.message_label.text()


def test_continue_resumes_an_interrupted_run(panel: RunsPanel, qtbot, runs_root: Path) -> None:
    select(panel, qtbot, "alpha")
    assert not panel.continue_action.isEnabled()  # completed: nothing to continue
    select(panel, qtbot, "gamma")
    assert panel.continue_action.isEnabled()
    with qtbot.waitSignal(panel.continue_requested, timeout=5_000) as requested:
        panel.continue_action.trigger()
    assert requested.args == [str(runs_root / "gamma")]


def test_an_added_folder_is_listed_and_remembered(panel: RunsPanel, qtbot, tmp_path: Path,
                                                  settings: QSettings) -> None:
    other = tmp_path / "elsewhere"
    write_run(other, "delta", tiny_config(tmp_path), [0.3], started=NOW,
              end={"outcome": "cancelled", "best_metric": 0.3, "best_epoch": 1})
    with qtbot.waitSignal(panel.runs_listed, timeout=10_000):
        panel.add_folder(str(other / "delta"))  # a run folder adds the folder holding it
    assert names(panel)[0] == "delta"
    assert panel.proxy.index(0, STATUS).data() == "stopped"
    assert settings.value(FOLDERS_KEY) in (str(other), [str(other)])


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_window_reruns_exactly_and_records_what_it_repeats(
        qtbot, settings: QSettings, runs_root: Path, one_thread: None) -> None:
    from studio.ui.main_window import MainWindow

    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    window.show()
    runs = window.runs_panel
    window.steps.setCurrentRow(window.PAGES.index("Runs"))
    qtbot.waitUntil(lambda: runs.model.rowCount() == 3, timeout=10_000)

    runs.evaluate_requested.emit(str(runs_root / "alpha"))
    assert window.evaluate_panel.run_edit.text() == str(runs_root / "alpha")
    assert window.pages.currentIndex() == window.PAGES.index("Evaluate")
    runs.export_requested.emit(str(runs_root / "alpha"))
    assert window.export_panel.run_edit.text() == str(runs_root / "alpha")

    config = run_config(runs_root / "alpha").replace(
        train=TrainConfig(epochs=1, batch_size=8, workers=0, precision="fp32", device="cpu"))
    with qtbot.waitSignal(window.session.finished, timeout=60_000) as finished:
        runs.rerun_requested.emit(str(runs_root / "alpha"), config)
    result = finished.args[0]
    assert result.outcome.value == "completed", result.message
    new = Path(result.run_dir)
    assert new.parent == runs_root and new.name.startswith("alpha-rerun-")
    assert json.loads((new / "run.json").read_text())["rerun_of"] == str(runs_root / "alpha")
    window.steps.setCurrentRow(window.PAGES.index("Runs"))
    qtbot.waitUntil(lambda: runs.model.rowCount() == 4, timeout=10_000)
    window.stop_and_wait()


def test_a_process_rerun_hands_the_run_to_studio_train_rerun(tmp_path: Path) -> None:
    from studio.ui.process_run import ProcessRun

    run = ProcessRun.for_config(tiny_config(tmp_path), str(tmp_path / "new"),
                                rerun_of=str(tmp_path / "old"))
    arguments = run._process.arguments()
    assert arguments[arguments.index("--rerun") + 1] == str(tmp_path / "old")
    assert "--config" not in arguments
