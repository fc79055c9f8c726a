"""GalleryModel: evaluated images (a confusion-matrix cell, the top losses) as a list of
thumbnails captioned "true → predicted  87%".

Thumbnails load lazily: the view asks for a decoration only for the items it paints, the model
queues those paths and decodes them in the thread pool a batch at a time, and a bounded cache
keeps them for the next cell. Until a thumbnail arrives the item shows a blank tile.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSize,
    Qt,
    QTimer,
    Signal,
    Slot,
)
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap

from studio.engine.evaluate import ImageResult
from studio.ui.tasks import BackgroundTask
from studio.ui.thumbnails import Thumbnail, make_thumbnail, thumbnail_pixmap

Index = QModelIndex | QPersistentModelIndex
ROOT = QModelIndex()

THUMBNAIL_SIZE = 96
BATCH = 32  # thumbnails decoded per pool job
CACHE_LIMIT = 1000  # thumbnails kept: at most ~37 MB of 96-px pixmaps
PATH_ROLE = Qt.ItemDataRole.UserRole + 1  # str
RESULT_ROLE = Qt.ItemDataRole.UserRole + 2  # ImageResult
LOADED_ROLE = Qt.ItemDataRole.UserRole + 3  # bool: the thumbnail (or its failure) is known

OverlayProvider = Callable[[ImageResult], "QIcon | None"]  # None: show the plain thumbnail

CORRECT_TEXT = QColor(27, 110, 40)
WRONG_TEXT = QColor(176, 0, 32)


def load_thumbnail_map(paths: Sequence[str], size: int) -> dict[str, Thumbnail | None]:
    """Every path's thumbnail, None for a file that cannot be read (pool thread, no Qt)."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="studio-gallery") as pool:
        made = pool.map(lambda path: make_thumbnail(path, path, size), paths)
        return dict(zip(paths, made, strict=True))


def caption(result: ImageResult, labels: Sequence[str]) -> str:
    return f"{labels[result.true]} → {labels[result.predicted]}  {result.confidence:.0%}"


class GalleryModel(QAbstractListModel):
    """A list of ImageResults with lazily loaded thumbnails."""

    thumbnails_arrived = Signal()  # a batch of thumbnails was added to the cache

    def __init__(self, size: int = THUMBNAIL_SIZE, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._size = size
        self._results: list[ImageResult] = []
        self._labels: list[str] = []
        self._rows_of: dict[str, list[int]] = {}
        self._cache: OrderedDict[str, QIcon | None] = OrderedDict()
        self._pending: dict[str, None] = {}  # ordered set: paths asked for, not yet loading
        self._in_flight: list[str] = []
        self._overlay: OverlayProvider | None = None
        self._placeholder = self._blank_icon()
        self._broken: QIcon | None = None
        self._task = BackgroundTask(self)
        self._task.succeeded.connect(self._on_task_succeeded)
        self._task.failed.connect(self._on_task_failed)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)  # after the view has asked for every item it paints
        self._timer.timeout.connect(self._on_timer_timeout)

    # -- state ----------------------------------------------------------------------------

    @property
    def results(self) -> list[ImageResult]:
        return list(self._results)

    @property
    def labels(self) -> list[str]:
        return self._labels

    @property
    def loading(self) -> bool:
        return bool(self._pending or self._in_flight)

    def set_results(self, results: Sequence[ImageResult], labels: Sequence[str]) -> None:
        self.beginResetModel()
        self._results = list(results)
        self._labels = list(labels)
        self._rows_of = {}
        for row, result in enumerate(self._results):
            self._rows_of.setdefault(result.path, []).append(row)
        self._pending.clear()  # the old listing's requests; the view asks again for the new
        self.endResetModel()

    def clear(self) -> None:
        self.set_results([], self._labels)

    def set_overlay(self, provider: OverlayProvider | None) -> None:
        """Decorations drawn by ``provider`` where it has one (class-activation maps), the
        plain thumbnails elsewhere and with None."""
        self._overlay = provider
        self.refresh_decorations()

    def refresh_decorations(self) -> None:
        """Every item's picture again: overlays arrived, or their opacity changed."""
        if self._results:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._results) - 1, 0),
                                  [Qt.ItemDataRole.DecorationRole])

    # -- Qt model -------------------------------------------------------------------------

    def rowCount(self, parent: Index = ROOT) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self._results)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._results):
            return None
        result = self._results[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return caption(result, self._labels)
        if role == Qt.ItemDataRole.DecorationRole:
            if self._overlay is not None:
                icon = self._overlay(result)
                if icon is not None:
                    return icon
            return self._icon(result.path)
        if role == Qt.ItemDataRole.ForegroundRole:
            return CORRECT_TEXT if result.correct else WRONG_TEXT
        if role == Qt.ItemDataRole.ToolTipRole:
            true, predicted = self._labels[result.true], self._labels[result.predicted]
            return (f"{result.path}\ntrue {true}, predicted {predicted} "
                    f"({result.confidence:.1%})\nprobability of {true}: "
                    f"{result.true_probability:.1%} · loss {result.loss:.3f}"
                    "\nDouble-click to open the image")
        if role == PATH_ROLE:
            return result.path
        if role == RESULT_ROLE:
            return result
        if role == LOADED_ROLE:
            return result.path in self._cache
        return None

    # -- thumbnails -----------------------------------------------------------------------

    def _icon(self, path: str) -> QIcon:
        if path in self._cache:
            self._cache.move_to_end(path)
            icon = self._cache[path]
            return icon if icon is not None else self._broken_icon()
        if path not in self._pending and path not in self._in_flight:
            self._pending[path] = None
            self._timer.start()
        return self._placeholder

    @Slot()
    def _on_timer_timeout(self) -> None:
        if self._task.running or not self._pending:
            return
        batch = list(self._pending)[:BATCH]
        for path in batch:
            del self._pending[path]
        self._in_flight = batch
        self._task.start(partial(load_thumbnail_map, batch, self._size))

    @Slot(object)
    def _on_task_succeeded(self, thumbnails: dict[str, Thumbnail | None]) -> None:
        for path in self._in_flight:
            thumb = thumbnails.get(path)
            self._cache[path] = _icon_of(thumb) if thumb is not None else None
        self._finish_batch()

    @Slot(str)
    def _on_task_failed(self, message: str) -> None:
        for path in self._in_flight:
            self._cache[path] = None
        self._finish_batch()

    def _finish_batch(self) -> None:
        loaded, self._in_flight = self._in_flight, []
        while len(self._cache) > CACHE_LIMIT:
            self._cache.popitem(last=False)
        rows = sorted(row for path in loaded for row in self._rows_of.get(path, ()))
        for row in rows:
            index = self.index(row, 0)
            self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole, LOADED_ROLE])
        self.thumbnails_arrived.emit()
        if self._pending:
            self._timer.start()

    def _blank_icon(self) -> QIcon:
        pixmap = QPixmap(QSize(self._size, self._size))
        pixmap.fill(QColor(236, 236, 236))
        return QIcon(pixmap)

    def _broken_icon(self) -> QIcon:
        if self._broken is None:
            pixmap = QPixmap(QSize(self._size, self._size))
            pixmap.fill(QColor(250, 228, 228))
            painter = QPainter(pixmap)
            painter.setPen(WRONG_TEXT)
            painter.drawText(pixmap.rect(), int(Qt.AlignmentFlag.AlignCenter
                                                | Qt.TextFlag.TextWordWrap), "cannot be read")
            painter.end()
            self._broken = QIcon(pixmap)
        return self._broken


def _icon_of(thumb: Thumbnail) -> QIcon:
    return QIcon(thumbnail_pixmap(thumb))
