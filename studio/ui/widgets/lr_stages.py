"""Progressive unfreezing on the Learning-rate page: head only first, then one more group every N
epochs. A mixin of LearningRatePanel (it uses the panel's project, spins, box, stage table and
labels), kept apart so the panel's file stays about groups and rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QTableView, QTableWidgetItem

from studio.engine.backbones import ModelDescription
from studio.engine.config import FreezeSpec, ParamGroupSpec, RunConfig, StageSpec
from studio.engine.errors import ConfigError
from studio.engine.params import assign_groups, gradual_unfreezing, is_under, resolve_frozen
from studio.ui.text import sentence

if TYPE_CHECKING:
    from PySide6.QtWidgets import QCheckBox, QSpinBox, QTableWidget

    from studio.ui.project import ProjectModel


class ProgressiveStages:
    """The stage controls of the Learning-rate page and the config's stages they mirror."""

    _project: ProjectModel
    progressive_box: QCheckBox
    first_spin: QSpinBox
    every_spin: QSpinBox
    stage_table: QTableWidget
    stage_hint: QLabel
    stage_error: QLabel
    # and the panel's _show(label, text) and _stage_grouping(quiet)

    def _on_progressive_box_toggled(self, checked: bool) -> None:
        if checked:
            self._enable_progressive()
        elif self._project.config.stages:
            self._project.set_stages(())

    def _on_every_spin_value_changed(self, _value: int) -> None:
        if self.progressive_box.isChecked():
            self._enable_progressive()

    def _on_first_spin_value_changed(self, _value: int) -> None:
        if self.progressive_box.isChecked():
            self._enable_progressive()

    def _regenerate_stages(self) -> None:
        if self._project.config.stages:
            self._enable_progressive()

    def _enable_progressive(self) -> None:
        """Head only at first, then one more group every N epochs: one config change."""
        stages, reason = self._planned_stages()
        if not stages:
            self._show(self.stage_error, reason)
            self._sync_progressive(self._project.config)
            return
        config = self._project.config
        freeze = FreezeSpec(preset="head_only", bn_frozen=config.freeze.bn_frozen)
        try:
            self._project.set_config(config.replace(freeze=freeze, stages=stages))
        except ConfigError as error:
            self._show(self.stage_error, sentence(str(error)))
            self._sync_progressive(self._project.config)
            return
        self._show(self.stage_error, "")

    def _planned_stages(self) -> tuple[tuple[StageSpec, ...], str]:
        description = self._project.description
        if description is None:
            return (), "Choose a backbone first: unfreezing follows its groups."
        groups = self._project.config.optim.groups or self._stage_grouping() or ()
        body = _body_groups(groups, description)
        if not body:
            return (), ("Progressive unfreezing needs groups below the head; click "
                        "“Group by stage” first.")
        head = ParamGroupSpec("head", (description.head,), self._project.config.optim.lr)
        try:
            stages = gradual_unfreezing([*body, head], self.first_spin.value(),
                                        self.every_spin.value(),
                                        self._project.config.freeze.bn_frozen)
        except ConfigError as error:
            return (), sentence(str(error))
        return stages, ""

    def _sync_progressive(self, config: RunConfig) -> None:
        """The box, spins and table show the config's stages (never the other way round)."""
        stages = config.stages
        self.progressive_box.blockSignals(True)
        self.progressive_box.setChecked(bool(stages))
        self.progressive_box.blockSignals(False)
        if stages:
            self.first_spin.blockSignals(True)
            self.first_spin.setValue(stages[0].epoch)
            self.first_spin.blockSignals(False)
            if len(stages) > 1:
                self.every_spin.blockSignals(True)
                self.every_spin.setValue(max(1, stages[1].epoch - stages[0].epoch))
                self.every_spin.blockSignals(False)
        self._fill_stage_table(config)

    def _fill_stage_table(self, config: RunConfig) -> None:
        description = self._project.description
        rows: list[tuple[str, str, str, str]] = []
        if config.stages:
            rows.append(("1", _start_text(config.freeze),
                         self._trainable_text(config.freeze), "—"))
        opened: set[str] = set()
        groups = config.optim.groups or (config.stages and self._stage_grouping(True)) or ()
        for stage in config.stages:
            rows.append((str(stage.epoch), _unfreeze_text(stage, opened, groups),
                         self._trainable_text(stage.freeze), _scale_text(stage.lr_scale)))
            opened |= set(stage.freeze.unfreeze)
        self.stage_table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                item = QTableWidgetItem(text)
                if c in (0, 2):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight
                                          | Qt.AlignmentFlag.AlignVCenter)
                item.setToolTip(text)
                self.stage_table.setItem(r, c, item)
        self.stage_table.setVisible(bool(rows))
        fit_height(self.stage_table, len(rows), 1, 8)
        late = [s for s in config.stages if s.epoch > config.train.epochs]
        hint = ""
        if late:
            hint = (f"{len(late)} of {len(config.stages)} stages start after the last epoch "
                    f"({config.train.epochs}); train longer or unfreeze more often.")
        elif not config.stages and description is not None:
            hint = "Off: the layers you choose in the layer tree train for the whole run."
        self.stage_hint.setText(hint)
        self.stage_hint.setVisible(bool(hint))

    def _trainable_text(self, spec: FreezeSpec) -> str:
        description = self._project.description
        if description is None:
            return "—"
        try:
            frozen = resolve_frozen(description.names, spec, description.head)
        except ConfigError:
            return "?"
        trainable = sum(v for n, v in description.numel.items() if n not in frozen)
        return f"{trainable:,}"


def fit_height(table: QTableView, rows: int, least: int, most: int) -> None:
    """Size a short table to its rows (scrolling past ``most``), so a panel has no dead grey
    space and the schedule below the groups stays in view."""
    shown = min(max(rows, least), most)
    header = table.horizontalHeader().sizeHint().height()
    height = header + shown * table.verticalHeader().defaultSectionSize() + 2 * table.frameWidth()
    table.setFixedHeight(height + 2)


def _body_groups(groups: Sequence[ParamGroupSpec],
                 description: ModelDescription) -> list[ParamGroupSpec]:
    """The groups below the head that hold parameters, in order: what stages unfreeze. The
    engine's gradual_unfreezing takes the last group as the head, so the head goes last."""
    assignment = assign_groups(description.names, groups)
    head_groups = {assignment.group_of[n] for n in description.names
                   if is_under(n, description.head)}
    return [g for g in groups if g.name not in head_groups and g.name not in assignment.empty]


def _start_text(spec: FreezeSpec) -> str:
    if spec.preset == "head_only" and not spec.freeze and not spec.unfreeze:
        return "Start: the head only"
    if spec.preset == "train_all" and not spec.freeze:
        return "Start: everything"
    return "Start: as set in the layer tree"


def _unfreeze_text(stage: StageSpec, opened: set[str],
                   groups: Sequence[ParamGroupSpec]) -> str:
    spec = stage.freeze
    if spec.preset != "head_only" or spec.freeze:
        return "A custom freeze setting"
    new = [p for p in spec.unfreeze if p not in opened]
    if not new:
        return "Nothing new"
    names = [g.name for g in groups if g.patterns and set(g.patterns) <= set(new)]
    covered = {p for g in groups if g.name in names for p in g.patterns}
    rest = [p for p in new if p not in covered]
    return "+ " + ", ".join(names + rest)


def _scale_text(scale: dict[str, float]) -> str:
    if not scale:
        return "—"
    return ", ".join(f"{'all' if g == '*' else g} ×{v:g}" for g, v in scale.items())
