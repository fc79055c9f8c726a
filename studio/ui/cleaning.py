"""Relabel and remove from any list of a dataset's images: menu actions on the engine's Cleaner.

The doctor's Check tab uses these; any gallery can too::

    menu = QMenu(self)
    add_cleaning_actions(menu, scan.root, selected_paths, scan.classes,
                         changed=self._on_files_changed, failed=self._show_message)
    menu.exec(event.globalPos())

Moves are renames inside the dataset, quick enough for the GUI thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu

from studio.engine.cleaner import Change, Cleaner, apply_to_all
from studio.engine.errors import StudioError

Changed = Callable[[list[Change]], None]
Failed = Callable[[str], None]


def add_cleaning_actions(menu: QMenu, root: str, paths: Sequence[str],
                         classes: Sequence[str] | None = None, changed: Changed | None = None,
                         failed: Failed | None = None) -> list[QAction]:
    """Add "Relabel as ▸ <class>" and "Remove from dataset" for ``paths`` (absolute, or
    relative to ``root``) to ``menu``; the actions it added (disabled without paths).

    ``changed`` gets the changes made (also after a partial failure), ``failed`` the one
    sentence of what went wrong. ``classes`` default to the dataset's class folders.
    """
    paths = list(paths)
    if classes is None:
        try:
            classes = Cleaner(root).classes()
        except StudioError:
            classes = ()
    current = {Path(p).parent.name for p in paths}
    relabel = menu.addMenu("&Relabel as")
    relabel.setToolTipsVisible(True)
    relabel.setEnabled(bool(paths) and bool(classes))
    added: list[QAction] = [relabel.menuAction()]
    for name in classes:
        action = relabel.addAction(name)
        action.setEnabled(current != {name})
        action.setToolTip(f"Move the selected image(s) into the '{name}' class folder")
        action.triggered.connect(lambda _=False, n=name: _apply(root, paths, n, changed, failed))
        added.append(action)
    remove = menu.addAction("Re&move from dataset")
    remove.setEnabled(bool(paths))
    remove.setToolTip("Move the selected image(s) into the dataset's hidden .studio-trash "
                      "folder (undo puts them back)")
    remove.triggered.connect(lambda _=False: _apply(root, paths, None, changed, failed))
    added.append(remove)
    return added


def relabel_or_remove(root: str, paths: Sequence[str], class_name: str | None,
                      changed: Changed | None = None, failed: Failed | None = None
                      ) -> list[Change]:
    """Relabel ``paths`` as ``class_name`` (remove them with None); reports as the menu does."""
    return _apply(root, paths, class_name, changed, failed)


def undo_changes(root: str, count: int = 1, changed: Changed | None = None,
                 failed: Failed | None = None) -> list[Change]:
    """Undo the dataset's last ``count`` changes; the undo records."""
    try:
        done = Cleaner(root).undo(count)
    except StudioError as error:
        if failed is not None:
            failed(str(error))
        return []
    if changed is not None:
        changed(done)
    return done


def _apply(root: str, paths: Sequence[str], class_name: str | None, changed: Changed | None,
           failed: Failed | None) -> list[Change]:
    try:
        done, error = apply_to_all(Cleaner(root), paths, class_name)
    except StudioError as problem:
        done, error = [], str(problem)
    if done and changed is not None:
        changed(done)
    if error and failed is not None:
        failed(error)
    return done
