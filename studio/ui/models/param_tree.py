"""ParamTreeModel: the model's parameters as a checkable tree (checked = trainable).

A mirror, not an owner (house style 7): the tree is the description's ParamNode tree, the frozen
set is whatever the project's freeze spec resolves to. A leaf's check state is looked up in that
set; a module's is derived from how many of its leaves are trainable, never stored. A check edit
turns into one ``project.set_frozen`` call; the model then hears ``config_changed`` like everyone.

Nodes are numbered in depth-first order, so the leaves under any node form one contiguous range
of the leaf list; with a prefix sum over "is trainable" a module's state and its trainable count
are O(1) lookups, and a click costs O(n) in all, however big the model.

During a run two more columns show how each row learns (:meth:`set_layer_stats`, fed by the
engine's LayerStats twice a second): the gradient norm and the update-to-weight ratio of its
trainable parameters. Only those two columns change (one dataChanged per group of siblings), so
expansion, selection and check states stay as the user left them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, overload

from PySide6.QtCore import (
    QAbstractItemModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QFont, QGuiApplication, QPalette

from studio.engine.backbones import ModelDescription
from studio.engine.errors import ConfigError
from studio.engine.events import LayerStats
from studio.engine.params import ParamNode, is_under, resolve_frozen
from studio.ui.models.learning import (
    LOW_RATIO,
    NodeFigures,
    learning_text,
    learning_tooltip,
    on_tree_names,
)
from studio.ui.models.lora_marks import LoraMarks
from studio.ui.project import ProjectModel

FULL_NAME_ROLE = Qt.ItemDataRole.UserRole + 1  # str: the full dotted name
NUMEL_ROLE = Qt.ItemDataRole.UserRole + 2  # int: parameters in this row (a module: the sum)
TRAINABLE_ROLE = Qt.ItemDataRole.UserRole + 3  # int: trainable parameters in this row
IS_LEAF_ROLE = Qt.ItemDataRole.UserRole + 4  # bool: a parameter tensor, not a module

NAME_COLUMN, SHAPE_COLUMN, PARAMS_COLUMN, LORA_COLUMN, GRAD_COLUMN, RATIO_COLUMN = range(6)
HEADERS = ("Name", "Shape", "Parameters", "LoRA", "Grad norm", "Update / weight")
HEADER_TIPS = (
    "Modules and their parameter tensors; tick a row to train it, untick it to freeze it; "
    "right-click a module to put LoRA adapters on its layers",
    "The shape of each parameter tensor",
    "How many numbers each tensor (or module, in total) holds",
    "LoRA adapters: a layer's rank, or how many adapted layers a module holds; an adapted "
    "layer's own weights stay frozen while its small adapter trains",
    "During a run: the L2 norm of this row's gradient at the last sampled step (its trainable "
    "parameters taken together; frozen rows stay empty)",
    "During a run: how far the last sampled step moved this row's weights, ||Δw|| / ||w||; "
    "around 1e-3 a layer learns steadily, far below it hardly at all",
)
LEARNING_COLUMNS = (GRAD_COLUMN, RATIO_COLUMN)
LOW_RATIO_COLOUR = QColor(178, 106, 0)  # amber: readable on light and dark rows alike
LORA_COLOUR = QColor(0, 131, 143)  # teal: the third state, beside trainable and frozen

Index = QModelIndex | QPersistentModelIndex
ROOT = QModelIndex()  # the invisible root, as a default argument
CHECKED, PARTIAL, UNCHECKED = (Qt.CheckState.Checked, Qt.CheckState.PartiallyChecked,
                               Qt.CheckState.Unchecked)


def format_shape(shape: Sequence[int]) -> str:
    return "×".join(str(size) for size in shape) if shape else "scalar"


def to_check_state(value: Any) -> Qt.CheckState | None:
    """What a view or a test passes to setData(CheckStateRole): an enum or its int value."""
    try:
        return Qt.CheckState(value if isinstance(value, int) else value.value)
    except (ValueError, AttributeError, TypeError):
        return None


class ParamTreeModel(QAbstractItemModel):
    """Five columns: Name (user-checkable), Shape, Parameters, and during a run Grad norm and
    Update / weight."""

    counts_changed = Signal(int, int)  # trainable, total — after every refresh
    freeze_error_changed = Signal(str)  # why the freeze spec does not fit ("" when it does)

    def __init__(self, project: ProjectModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._project = project
        self._description: ModelDescription | None = None
        self._frozen: frozenset[str] = frozenset()
        self._freeze_error = ""
        self._learning = NodeFigures()  # the live learning columns' figures, per node
        self._clear()
        self._italic = QFont()
        self._italic.setItalic(True)
        project.description_changed.connect(self._on_project_description_changed)
        project.config_changed.connect(self._on_project_config_changed)
        self._rebuild(project.description)

    # -- what the panel asks ------------------------------------------------------------

    @property
    def description(self) -> ModelDescription | None:
        return self._description

    @property
    def freeze_error(self) -> str:
        """Why the project's freeze spec does not fit this model, or ""."""
        return self._freeze_error

    def counts(self) -> tuple[int, int]:
        """(trainable, total) parameters of the whole model, LoRA adapters included."""
        adapters = self.adapter_params()
        return self._trainable_numel_prefix[-1] + adapters, self._numel_total + adapters

    def adapter_params(self) -> int:
        return self._marks.adapter_params

    @property
    def lora_layers(self) -> frozenset[str]:
        return self._marks.layers

    def full_name(self, index: Index) -> str:
        return self._nodes[self._id(index)].name if index.isValid() else ""

    def leaf_names(self, index: Index) -> list[str]:
        node = self._id(index) if index.isValid() else 0
        return self._leaf_names[self._leaf_lo[node]:self._leaf_hi[node]]

    def set_trainable(self, indexes: Iterable[Index], trainable: bool) -> bool:
        """Train (or freeze) every parameter under ``indexes`` with one project edit."""
        if self._description is None:
            return False
        names: set[str] = set()
        for index in indexes:
            if index.isValid() and index.model() is self:
                names.update(self.leaf_names(index))
        if not names:
            return False
        frozen = set(self._frozen)
        if trainable:
            frozen -= names
        else:
            frozen |= names
        # a tick or an untick on an adapted layer ends its LoRA: the box means what it shows
        lora = {layer for layer in self.lora_layers
                if not any(is_under(n, layer) for n in names)}
        if frozen != self._frozen or lora != self.lora_layers:
            self._project.set_frozen(frozen, lora_layers=lora)
        return True

    def set_lora(self, indexes: Iterable[Index], on: bool) -> bool:
        """Put LoRA adapters on (or take them off) every adaptable layer under ``indexes``."""
        if self._description is None:
            return False
        rows = [self.full_name(i) for i in indexes if i.isValid() and i.model() is self]
        layers = {layer for layer in self._project.adaptable()
                  if any(is_under(layer, row) for row in rows)}
        if not layers:
            return False
        current = self.lora_layers
        self._project.set_lora_layers(current | layers if on else current - layers)
        return True

    def lora_under(self, index: Index) -> int:
        """How many adapted layers are at or under ``index``."""
        row = self.full_name(index)
        return sum(is_under(layer, row) for layer in self.lora_layers)

    def adaptable_under(self, index: Index) -> int:
        """How many layers under ``index`` LoRA can adapt."""
        row = self.full_name(index)
        return sum(is_under(layer, row) for layer in self._project.adaptable())

    @property
    def learning_step(self) -> int | None:
        """The optimizer step the learning columns show, or None when they are empty."""
        return self._learning.global_step

    def set_layer_stats(self, event: LayerStats) -> bool:
        """Show a sampled step's figures in the learning columns; False (and empty columns)
        when the event names a parameter this tree does not have: it is of another model."""
        known = self._id_of_name
        event = on_tree_names(event, known, self._leaf_names, self._leaf_lo)
        if self._description is None or any(name not in known for name in event.grad_norm):
            self.clear_layer_stats()
            return False
        self._learning.update(event, self._nodes, self._parent)
        self._emit_learning_changed()
        return True

    def clear_layer_stats(self) -> None:
        """Empty the learning columns (a new run starts, or none is live)."""
        if self._learning.clear():
            self._emit_learning_changed()

    def index_of(self, name: str, column: int = 0) -> QModelIndex:
        """The index of the module or parameter called ``name`` (invalid if there is none)."""
        node = self._id_of_name.get(name)
        if node is None or node == 0:
            return QModelIndex()
        return self.createIndex(self._row[node], column, node)

    # -- Qt model interface -------------------------------------------------------------

    def index(self, row: int, column: int, parent: Index = ROOT) -> QModelIndex:
        if not self.hasIndex(row, column, parent):
            return QModelIndex()
        parent_id = self._id(parent) if parent.isValid() else 0
        return self.createIndex(row, column, self._children[parent_id][row])

    @overload
    def parent(self) -> QObject: ...

    @overload
    def parent(self, child: Index) -> QModelIndex: ...

    def parent(self, child: Index | None = None) -> QModelIndex | QObject:
        if child is None:  # QObject.parent()
            return super().parent()
        if not child.isValid():
            return QModelIndex()
        up = self._parent[self._id(child)]
        return QModelIndex() if up <= 0 else self.createIndex(self._row[up], 0, up)

    def rowCount(self, parent: Index = ROOT) -> int:
        if not parent.isValid():
            return len(self._children[0])
        if parent.column() != 0:
            return 0
        return len(self._children[self._id(parent)])

    def columnCount(self, parent: Index = ROOT) -> int:
        return len(HEADERS)

    def hasChildren(self, parent: Index = ROOT) -> bool:
        return self.rowCount(parent) > 0

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.column() == NAME_COLUMN:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        if not self._children[self._id(index)]:
            flags |= Qt.ItemFlag.ItemNeverHasChildren
        return flags

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        node_id = self._id(index)
        node = self._nodes[node_id]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if column == NAME_COLUMN:
                return node.label
            if column == SHAPE_COLUMN:
                return format_shape(node.shape) if node.is_leaf else ""
            if column == PARAMS_COLUMN:
                return f"{node.numel:,}"
            if column == LORA_COLUMN:
                return self._marks.text(node_id)
            return self._learning_text(node_id, column)
        if role == Qt.ItemDataRole.CheckStateRole:
            return self._state(node_id) if column == NAME_COLUMN else None
        if role == Qt.ItemDataRole.ForegroundRole:
            if column == RATIO_COLUMN:
                ratio = self._learning.update_ratio(node_id)
                if ratio is not None and ratio < LOW_RATIO:
                    return LOW_RATIO_COLOUR
            if self._marks.marked(node_id, node):
                return LORA_COLOUR
            return self._frozen_brush if self._state(node_id) == UNCHECKED else None
        if role == Qt.ItemDataRole.FontRole:
            return self._italic if self._state(node_id) == UNCHECKED else None
        if role == Qt.ItemDataRole.TextAlignmentRole:
            if column in (PARAMS_COLUMN, LORA_COLUMN, *LEARNING_COLUMNS):
                return Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
            return None
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(node_id, column)
        if role == FULL_NAME_ROLE:
            return node.name
        if role == NUMEL_ROLE:
            return node.numel
        if role == TRAINABLE_ROLE:
            return self._trainable_numel(node_id)
        if role == IS_LEAF_ROLE:
            return node.is_leaf
        return None

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if role != Qt.ItemDataRole.CheckStateRole or not index.isValid() \
                or index.column() != NAME_COLUMN:
            return False
        state = to_check_state(value)
        if state not in (CHECKED, UNCHECKED):  # a half state is derived, never set
            return False
        return self.set_trainable([index], state == CHECKED)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(HEADERS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return HEADER_TIPS[section]
        if role == Qt.ItemDataRole.TextAlignmentRole and section in (PARAMS_COLUMN,
                                                                     *LEARNING_COLUMNS):
            return Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        return None

    # -- project signals ----------------------------------------------------------------

    def _on_project_description_changed(self, description: ModelDescription | None) -> None:
        self._rebuild(description)

    def _on_project_config_changed(self, _config: object) -> None:
        if self._project.description is not self._description:
            return  # set_description reconciles the config first; the reset follows
        self._refresh_frozen()

    # -- internals ----------------------------------------------------------------------

    def _clear(self) -> None:
        self._nodes: list[ParamNode] = [ParamNode("", "")]
        self._parent: list[int] = [-1]
        self._row: list[int] = [0]
        self._children: list[list[int]] = [[]]
        self._leaf_lo: list[int] = [0]
        self._leaf_hi: list[int] = [0]
        self._leaf_names: list[str] = []
        self._leaf_numel: list[int] = []
        self._id_of_name: dict[str, int] = {"": 0}
        self._types: dict[int, str] = {}
        self._trainable_prefix: list[int] = [0]
        self._trainable_numel_prefix: list[int] = [0]
        self._numel_total = 0
        self._marks = LoraMarks()  # the third state: which rows LoRA adapts
        self._learning.clear()

    def _rebuild(self, description: ModelDescription | None) -> None:
        self.beginResetModel()
        self._clear()
        self._description = description
        if description is not None:
            self._number(description.tree)
            self._types = self._module_types(description)
        self._frozen_brush = QGuiApplication.palette().brush(QPalette.ColorGroup.Disabled,
                                                             QPalette.ColorRole.Text)
        self._frozen = self._project.frozen() if description is not None else frozenset()
        self._mark(self._project.lora_layers() if description is not None else frozenset(),
                   self._project.config.lora.rank)
        self._recount()
        self.endResetModel()
        self.counts_changed.emit(*self.counts())
        self._check_spec()

    def _number(self, root: ParamNode) -> None:
        """Depth-first numbering without recursion (a deep model must not hit the limit)."""
        self._nodes[0] = root
        self._numel_total = root.numel
        stack: list[tuple[int, int]] = [(0, 0)]  # (node id, next child to visit)
        while stack:
            node_id, child = stack.pop()
            node = self._nodes[node_id]
            if child == 0 and node.is_leaf:
                self._leaf_names.append(node.name)
                self._leaf_numel.append(node.numel)
            if child < len(node.children):
                stack.append((node_id, child + 1))
                new_id = len(self._nodes)
                kid = node.children[child]
                self._nodes.append(kid)
                self._parent.append(node_id)
                self._row.append(child)
                self._children.append([])
                self._children[node_id].append(new_id)
                self._leaf_lo.append(len(self._leaf_names))
                self._leaf_hi.append(0)
                self._id_of_name[kid.name] = new_id
                stack.append((new_id, 0))
            else:
                self._leaf_hi[node_id] = len(self._leaf_names)

    def _module_types(self, description: ModelDescription) -> dict[int, str]:
        out: dict[int, str] = {}
        for name, module in description.model.named_modules():
            node = self._id_of_name.get(name)
            if node:
                out[node] = type(module).__name__
        return out

    def _recount(self) -> None:
        count, numel = [0], [0]
        for name, size in zip(self._leaf_names, self._leaf_numel, strict=True):
            trainable = name not in self._frozen and name not in self._marks.leaves
            count.append(count[-1] + trainable)
            numel.append(numel[-1] + (size if trainable else 0))
        self._trainable_prefix, self._trainable_numel_prefix = count, numel

    def _mark(self, layers: frozenset[str], rank: int) -> bool:
        description = self._description
        modules = dict(description.model.named_modules()) if description and layers else {}
        ranges = list(zip(self._leaf_lo, self._leaf_hi, strict=True))
        return self._marks.mark(layers, rank, modules, self._id_of_name, self._leaf_names,
                                ranges, self._parent)

    def _refresh_frozen(self) -> None:
        frozen = self._project.frozen()
        lora, rank = self._project.lora_layers(), self._project.config.lora.rank
        self._check_spec()
        marks = self._marks
        if (frozen, lora, rank) == (self._frozen, marks.layers, marks.rank):
            return
        before = [self._state(i) for i in range(len(self._nodes))]
        self._frozen = frozen
        marks_changed = self._mark(lora, rank)  # texts, colours and tips of any row may change
        self._recount()
        self._emit_changed(None if marks_changed else before)
        self.counts_changed.emit(*self.counts())

    def _check_spec(self) -> None:
        """The project reads a freeze spec that does not fit the model as "nothing frozen";
        find out why, paying for a second resolve only in that case."""
        spec, error = self._project.config.freeze, ""
        may_fail = spec.preset == "up_to" or spec.freeze or spec.unfreeze
        if self._description is not None and not self._frozen and may_fail:
            try:
                resolve_frozen(self._description.names, spec, self._description.head)
            except ConfigError as failure:
                error = str(failure)
        if error != self._freeze_error:
            self._freeze_error = error
            self.freeze_error_changed.emit(error)

    def _emit_changed(self, before: list[Qt.CheckState] | None) -> None:
        """dataChanged for each run of siblings whose state changed (every row when ``before``
        is None): few signals, all valid."""
        last = len(HEADERS) - 1
        roles = [Qt.ItemDataRole.CheckStateRole, Qt.ItemDataRole.ForegroundRole,
                 Qt.ItemDataRole.FontRole, Qt.ItemDataRole.ToolTipRole, TRAINABLE_ROLE,
                 Qt.ItemDataRole.DisplayRole]  # the LoRA column's text
        for kids in self._children:
            start = None
            for row, kid in enumerate([*kids, None]):
                changed = kid is not None and (before is None
                                               or self._state(kid) != before[kid])
                if changed and start is None:
                    start = row
                elif not changed and start is not None:
                    first, end = kids[start], kids[row - 1]
                    self.dataChanged.emit(self.createIndex(start, 0, first),
                                          self.createIndex(row - 1, last, end), roles)
                    start = None

    def _emit_learning_changed(self) -> None:
        """dataChanged for the two learning columns only, one signal per group of siblings."""
        roles = [Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ForegroundRole,
                 Qt.ItemDataRole.ToolTipRole]
        for kids in self._children:
            if kids:
                self.dataChanged.emit(self.createIndex(0, GRAD_COLUMN, kids[0]),
                                      self.createIndex(len(kids) - 1, RATIO_COLUMN, kids[-1]),
                                      roles)

    def _learning_text(self, node_id: int, column: int) -> str:
        return learning_text(self._learning, node_id, column == GRAD_COLUMN)

    def _learning_tooltip(self, node_id: int, column: int) -> str:
        return learning_tooltip(self._learning, node_id, self._nodes[node_id],
                                column == GRAD_COLUMN)

    def _state(self, node_id: int) -> Qt.CheckState:
        lo, hi = self._leaf_lo[node_id], self._leaf_hi[node_id]
        trainable = self._trainable_prefix[hi] - self._trainable_prefix[lo]
        if trainable == hi - lo:
            return CHECKED
        return UNCHECKED if trainable == 0 else PARTIAL

    def _trainable_numel(self, node_id: int) -> int:
        lo, hi = self._leaf_lo[node_id], self._leaf_hi[node_id]
        return self._trainable_numel_prefix[hi] - self._trainable_numel_prefix[lo]

    def _tooltip(self, node_id: int, column: int) -> str:
        node = self._nodes[node_id]
        state = self._state(node_id)
        if column == NAME_COLUMN:
            kind = self._types.get(node_id, "parameter" if node.is_leaf else "module")
            status = {CHECKED: "trainable", UNCHECKED: "frozen", PARTIAL: "partly frozen"}[state]
            status = self._marks.status(node_id, node) or status
            return f"{node.name} ({kind}, {status})"
        if column == LORA_COLUMN:
            return self._marks.tooltip(node_id, node)
        if column == PARAMS_COLUMN:
            return f"{self._trainable_numel(node_id):,} of {node.numel:,} trainable"
        if column in LEARNING_COLUMNS:
            return self._learning_tooltip(node_id, column)
        return f"{node.name}: {format_shape(node.shape)}" if node.is_leaf else node.name

    @staticmethod
    def _id(index: Index) -> int:
        return int(index.internalId())
