"""Relabel or remove an image from the Evaluate gallery (a mistake that was the label's fault):
the cleaner's menu actions (studio.ui.cleaning) on the folder that was evaluated. A mixin of
EvaluatePanel, which owns the gallery, the evaluation and the message line."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QModelIndex, QPoint, Qt
from PySide6.QtWidgets import QMenu

from studio.ui.cleaning import add_cleaning_actions
from studio.ui.models.gallery import PATH_ROLE

if TYPE_CHECKING:
    from PySide6.QtCore import SignalInstance
    from PySide6.QtWidgets import QListView

    from studio.engine.evaluate import Evaluation


class GalleryCleaning:
    """Right-click a gallery image: Relabel as ▸ class, Remove from dataset."""

    gallery_view: QListView
    _evaluation: Evaluation | None
    dataset_changed: SignalInstance  # (root): files moved in the dataset at root
    _say: Callable[..., None]  # the panel's message line

    def _build_gallery_cleaning(self) -> None:
        self.gallery_view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.gallery_view.customContextMenuRequested.connect(
            self._on_gallery_view_context_menu_requested)

    def gallery_menu(self, index: QModelIndex) -> QMenu | None:
        """The relabel/remove menu for the image at ``index`` (None where there is none)."""
        evaluation, path = self._evaluation, index.data(PATH_ROLE) if index.isValid() else None
        if evaluation is None or not path or not evaluation.source:
            return None
        root = evaluation.source
        menu = QMenu(self.gallery_view)
        add_cleaning_actions(menu, root, [str(path)], evaluation.labels,
                             changed=lambda changes: self._on_gallery_cleaned(root, changes),
                             failed=lambda message: self._say(message, error=True))
        return menu

    def _on_gallery_view_context_menu_requested(self, position: QPoint) -> None:
        menu = self.gallery_menu(self.gallery_view.indexAt(position))
        if menu is not None:
            menu.exec(self.gallery_view.viewport().mapToGlobal(position))

    def _on_gallery_cleaned(self, root: str, changes: list[Any]) -> None:
        if not changes:
            return
        moved = "; ".join(change.describe() for change in changes)
        self._say(f"{moved}. The evaluation shows the folder as it was: evaluate again to see "
                  f"the change (studio clean --undo puts it back)")
        self.dataset_changed.emit(root)
