"""What the Runs page asks before it acts on runs, and the background jobs behind the asking.

Plain functions around the standard dialogs (tests answer them by patching QMessageBox and
QInputDialog) and job builders for :class:`~studio.ui.tasks.BackgroundTask`: checking what
changed since a run scans its dataset, and moving runs to the trash touches the disk, so neither
runs on the GUI thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QInputDialog, QLineEdit, QMessageBox, QWidget

from studio.engine.config import RunConfig
from studio.engine.history import RunSummary, trash_run
from studio.ui.text import sentence

YES, NO = QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.No


def same_folder(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def ask_new_name(parent: QWidget, run: RunSummary) -> str | None:
    """The new folder name typed, or None (cancelled, or unchanged)."""
    name, ok = QInputDialog.getText(parent, "Rename run", f"New name for {run.name}:",
                                    QLineEdit.EchoMode.Normal, run.name)
    return name if ok and name.strip() != run.name else None


def confirm_trash(parent: QWidget, runs: Sequence[RunSummary]) -> bool:
    if len(runs) == 1:
        question = (f"Move the run {runs[0].name} to the trash?\n\nIts folder {runs[0].path} "
                    f"goes to the trash, from where it can be restored.")
    else:
        question = (f"Move these {len(runs)} runs to the trash?\n\n"
                    + "\n".join(run.name for run in runs)
                    + "\n\nTheir folders go to the trash, from where they can be restored.")
    title = "Delete run" if len(runs) == 1 else "Delete runs"
    return QMessageBox.question(parent, title, question, YES | NO, NO) == YES


def confirm_rerun(parent: QWidget, name: str, notes: Sequence[str]) -> bool:
    """Ask, saying what changed since the run (``notes`` from ``rerun_differences``)."""
    what = (sentence("; ".join(notes)) if notes else
            "The dataset and the library versions are the same as in that run.")
    text = (f"Re-run {name} with the same settings and seed into a new run folder.\n\n"
            f"{what} Re-run {'anyway' if notes else 'it'}?")
    return QMessageBox.question(parent, "Re-run exactly", text, YES | NO,
                                NO if notes else YES) == YES


def rerun_check(run_dir: Path, config: RunConfig, scan: Any) -> Callable[[], list[str]]:
    """A job saying what changed since the run; ``scan`` is the project's scan of the run's
    dataset, or None to scan it here (in the background)."""

    def check() -> list[str]:
        from studio.engine.data import scan_folder
        from studio.engine.record import rerun_differences

        used = scan if scan is not None else scan_folder(
            config.data.root, val_fraction=config.data.val_fraction, seed=config.train.seed)
        return [str(note) for note in rerun_differences(run_dir, used)]

    return check


def trash_job(paths: Sequence[Path]) -> Callable[[], list[tuple[str, str | None]]]:
    """A job moving runs to the trash: (name, where it went, None for the system trash)."""

    def trash() -> list[tuple[str, str | None]]:
        moved = []
        for path in paths:
            target = trash_run(path)
            moved.append((path.name, str(target) if target is not None else None))
        return moved

    return trash


def trashed_sentence(moved: Sequence[tuple[str, str | None]]) -> str:
    names = ", ".join(name for name, _ in moved)
    places = {str(Path(target).parent) for _, target in moved if target}
    where = f" ({', '.join(sorted(places))})" if places else ""
    return f"Moved {names} to the trash{where}."
