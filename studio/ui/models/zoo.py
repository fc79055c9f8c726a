"""ZooTableModel: the torchvision (and timm) classification zoo as a sortable, filterable table.

It mirrors ``all_backbones()`` and owns nothing else: one row per BackboneInfo. A timm model's
parameter count is "—" until counted (:meth:`ZooTableModel.set_params`). Numbers are
shown formatted but sorted by value (SORT_ROLE), and FILTER_ROLE gives the text a search box
matches (name and family), so a plain QSortFilterProxyModel does the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt

from studio.engine.backbones import BackboneInfo, all_backbones

SORT_ROLE = Qt.ItemDataRole.UserRole  # a number (or the lower-case name) to sort by
FILTER_ROLE = Qt.ItemDataRole.UserRole + 1  # "name family", what a search matches
NAME_ROLE = Qt.ItemDataRole.UserRole + 2  # the backbone name, whatever the column

_Index = QModelIndex | QPersistentModelIndex
_NO_PARENT = QModelIndex()

COLUMNS = ("Name", "Family", "Params (M)", "GFLOPs", "ImageNet acc@1", "Input size")
NAME, FAMILY, PARAMS, GFLOPS, ACC1, INPUT = range(len(COLUMNS))
_HEADER_TIPS = (
    "The model name, as written in a run config (timm models as timm/<name>)",
    "The torchvision or timm module the model comes from",
    "Millions of parameters (with the 1000-class ImageNet head); — until a timm model is "
    "counted (search to narrow the list and it is)",
    "Billions of floating-point operations for one image at the input size",
    "Top-1 accuracy on ImageNet-1K of the default pretrained weights, in percent",
    "The image size (pixels) the default pretrained weights were evaluated at",
)
_NUMERIC = frozenset({PARAMS, GFLOPS, ACC1, INPUT})
_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
_LEFT = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter


class ZooTableModel(QAbstractTableModel):
    """One row per backbone; read-only but for parameter counts filled in later."""

    def __init__(self, infos: Sequence[BackboneInfo] | None = None, parent: Any = None) -> None:
        super().__init__(parent)
        self._infos: tuple[BackboneInfo, ...] = tuple(
            infos if infos is not None else all_backbones())
        self._rows = {info.name: row for row, info in enumerate(self._infos)}

    # -- lookups ----------------------------------------------------------------------------

    def info(self, row: int) -> BackboneInfo:
        return self._infos[row]

    def row_of(self, name: str) -> int:
        """The row of backbone ``name``, or -1 when the zoo has no such model."""
        return self._rows.get(name, -1)

    def uncounted(self, rows: Sequence[int]) -> list[str]:
        """The names among ``rows`` whose parameter count is not known yet."""
        return [self._infos[r].name for r in rows if self._infos[r].params is None]

    def set_params(self, counts: Mapping[str, int]) -> None:
        """Show parameter counts that became known (timm models counted in the background)."""
        infos, changed = list(self._infos), []
        for name, count in counts.items():
            row = self._rows.get(name, -1)
            if row >= 0 and infos[row].params != count:
                infos[row] = replace(infos[row], params=int(count))
                changed.append(row)
        self._infos = tuple(infos)
        for row in changed:
            self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))

    # -- Qt model interface ---------------------------------------------------------------

    def rowCount(self, parent: _Index = _NO_PARENT) -> int:
        return 0 if parent.isValid() else len(self._infos)

    def columnCount(self, parent: _Index = _NO_PARENT) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(COLUMNS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return _HEADER_TIPS[section]
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return _RIGHT if section in _NUMERIC else _LEFT
        return None

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._infos):
            return None
        info = self._infos[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return _display(info, column)
        if role == SORT_ROLE:
            return _sort_key(info, column)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return _RIGHT if column in _NUMERIC else _LEFT
        if role == Qt.ItemDataRole.ToolTipRole:
            return _tooltip(info)
        if role == FILTER_ROLE:
            return f"{info.name} {info.family}"
        if role == NAME_ROLE:
            return info.name
        return None

    def flags(self, index: _Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | \
            Qt.ItemFlag.ItemNeverHasChildren


def _display(info: BackboneInfo, column: int) -> str:
    if column == NAME:
        return info.name
    if column == FAMILY:
        return info.family
    if column == PARAMS:
        return "—" if info.params is None else f"{info.params / 1e6:.1f}"
    if column == GFLOPS:
        return "—" if info.gflops is None else f"{info.gflops:.2f}"
    if column == ACC1:
        return "—" if info.acc1 is None else f"{info.acc1:.1f}"
    return str(info.input_size)


def _sort_key(info: BackboneInfo, column: int) -> float | str:
    """Numbers sort as numbers; a missing figure sorts below every real one."""
    if column == NAME:
        return info.name.lower()
    if column == FAMILY:
        return f"{info.family.lower()} {info.name.lower()}"
    if column == PARAMS:
        return -1.0 if info.params is None else float(info.params)
    if column == GFLOPS:
        return -1.0 if info.gflops is None else float(info.gflops)
    if column == ACC1:
        return -1.0 if info.acc1 is None else float(info.acc1)
    return float(info.input_size)


def _tooltip(info: BackboneInfo) -> str:
    count = "parameters not counted yet" if info.params is None \
        else f"{info.params / 1e6:.1f} M parameters"
    parts = [f"{info.name} ({info.family}): {count}"]
    if info.gflops is not None:
        parts.append(f"{info.gflops:.2f} GFLOPs at {info.input_size} px")
    if info.acc1 is not None:
        top5 = f", acc@5 {info.acc5:.1f} %" if info.acc5 is not None else ""
        parts.append(f"ImageNet acc@1 {info.acc1:.1f} %{top5}")
    if info.default_weights:
        size = f", {info.file_size_mb:.0f} MB" if info.file_size_mb else ""
        parts.append(f"default weights {info.default_weights}{size}")
    else:
        parts.append("no pretrained weights")
    return "; ".join(parts)
