"""Project files for the main window: open, save, save as, the recent list, a dataset folder.

A mixin of MainWindow (it uses the window's project, settings, panels and menus), kept apart so
the window's file stays about composing panels and training.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Slot
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QFileDialog, QMessageBox

from studio.engine.config import ConfigError
from studio.engine.errors import StudioError

if TYPE_CHECKING:
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QListWidget, QMenu

    from studio.ui.project import ProjectModel

MAX_RECENT = 8


class ProjectFiles:
    """Open/save/recent for a window that has ``project``, ``settings``, ``recent_menu``,
    ``steps`` and ``dataset_panel``."""

    project: ProjectModel
    settings: QSettings
    recent_menu: QMenu
    steps: QListWidget
    dataset_panel: Any

    def open_project(self, path: str) -> bool:
        try:
            self.project.open(path)
        except (ConfigError, StudioError, OSError) as error:
            QMessageBox.warning(self, "Cannot open project", str(error))
            self._forget_recent(path)
            return False
        self._remember_recent(path)
        if self.project.config.data.root:
            self.dataset_panel.load_folder(self.project.config.data.root)
        return True

    def save_project(self, path: str) -> bool:
        try:
            self.project.save(path)
        except (OSError, StudioError) as error:
            QMessageBox.warning(self, "Cannot save project", f"{path} could not be written "
                                f"({error}); choose another place.")
            return False
        self._remember_recent(path)
        self.statusBar().showMessage(f"Saved {path}", 5_000)
        return True

    @Slot()
    def _on_open_action_triggered(self) -> None:
        start = self.settings.value("paths/last_project_dir", str(Path.home()))
        path, _ = QFileDialog.getOpenFileName(self, "Open project", start,
                                              "Finetune Studio projects (*.toml)")
        if path:
            self.settings.setValue("paths/last_project_dir", str(Path(path).parent))
            self.open_project(path)

    @Slot()
    def _on_save_action_triggered(self) -> None:
        if self.project.path:
            self.save_project(self.project.path)
        else:
            self._on_save_as_action_triggered()

    @Slot()
    def _on_save_as_action_triggered(self) -> None:
        start = self.settings.value("paths/last_project_dir", str(Path.home()))
        path, _ = QFileDialog.getSaveFileName(self, "Save project",
                                              str(Path(start) / "project.toml"),
                                              "Finetune Studio projects (*.toml)")
        if path:
            if not path.endswith(".toml"):
                path += ".toml"
            self.settings.setValue("paths/last_project_dir", str(Path(path).parent))
            self.save_project(path)

    @Slot()
    def _on_open_dataset_action_triggered(self) -> None:
        self.steps.setCurrentRow(0)
        start = self.settings.value("paths/last_dataset_dir", str(Path.home()))
        path = QFileDialog.getExistingDirectory(self, "Open dataset folder", start)
        if path:
            self.dataset_panel.load_folder(path)

    def _recent(self) -> list[str]:
        value = self.settings.value("recent/projects", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def _remember_recent(self, path: str) -> None:
        path = str(Path(path).resolve())
        recent = [path] + [p for p in self._recent() if p != path]
        self.settings.setValue("recent/projects", recent[:MAX_RECENT])
        self._refresh_recent()

    def _forget_recent(self, path: str) -> None:
        self.settings.setValue("recent/projects", [p for p in self._recent() if p != path])
        self._refresh_recent()

    def _refresh_recent(self) -> None:
        self.recent_menu.clear()
        recent = self._recent()
        for path in recent:
            action = self.recent_menu.addAction(path)
            action.setData(path)
            action.triggered.connect(self._on_recent_action_triggered)
        self.recent_menu.setEnabled(bool(recent))

    @Slot()
    def _on_recent_action_triggered(self) -> None:
        action = self.sender()
        if isinstance(action, QAction):
            self.open_project(str(action.data()))

