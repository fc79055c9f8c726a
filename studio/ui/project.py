"""ProjectModel: the window's editable state — one RunConfig plus what was learned about it.

Panels read and write the project; they never talk to each other. The RunConfig is the single
source of truth: the frozen set and the groups shown in the layer tree and the LR table are
derived from it and the current model description.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from studio.engine.backbones import ModelDescription
from studio.engine.config import (
    ConfigError,
    FreezeSpec,
    LoraSpec,
    ParamGroupSpec,
    RunConfig,
    StageSpec,
)
from studio.engine.data import DatasetScan
from studio.engine.params import compress, matches, resolve_frozen, spec_for_frozen


class ProjectModel(QObject):
    config_changed = Signal(object)  # RunConfig
    scan_changed = Signal(object)  # DatasetScan | None
    description_changed = Signal(object)  # ModelDescription | None
    path_changed = Signal(str)  # the project file, "" when unsaved

    def __init__(self, config: RunConfig | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._config = config or RunConfig()
        self._scan: DatasetScan | None = None
        self._description: ModelDescription | None = None
        self._path = ""
        self._adaptable: tuple[ModelDescription | None, tuple[str, ...]] = (None, ())

    # -- state ----------------------------------------------------------------------------

    @property
    def config(self) -> RunConfig:
        return self._config

    @property
    def scan(self) -> DatasetScan | None:
        return self._scan

    @property
    def description(self) -> ModelDescription | None:
        return self._description

    @property
    def path(self) -> str:
        return self._path

    @property
    def num_classes(self) -> int:
        return len(self._scan.classes) if self._scan is not None else 2

    def frozen(self) -> frozenset[str]:
        """Names frozen by the config's freeze spec in the current model (empty if unknown)."""
        if self._description is None:
            return frozenset()
        try:
            return resolve_frozen(self._description.names, self._config.freeze,
                                  self._description.head)
        except ConfigError:
            return frozenset()

    def adaptable(self) -> tuple[str, ...]:
        """The layers of the current model LoRA can adapt (found once per model)."""
        description = self._description
        if description is None:
            return ()
        if self._adaptable[0] is not description:
            from studio.engine.lora import adaptable_layers

            size = self._config.data.image_size or 224
            self._adaptable = (description, tuple(adaptable_layers(description.model,
                                                                    description.head, size)))
        return self._adaptable[1]

    def lora_layers(self) -> frozenset[str]:
        """The layers the config's LoRA targets adapt in the current model."""
        if not self._config.lora.enabled:
            return frozenset()
        from studio.engine.lora import choose

        return frozenset(choose(self.adaptable(), self._config.lora.targets))

    # -- edits ----------------------------------------------------------------------------

    def set_config(self, config: RunConfig) -> None:
        if config != self._config:
            self._config = config
            self.config_changed.emit(config)

    def update(self, section: str, **fields: Any) -> None:
        """Replace fields of one section, e.g. ``update("train", epochs=5)``. Raises
        ConfigError (with the field's name) when a value is invalid; nothing changes then."""
        current = getattr(self._config, section)
        self.set_config(self._config.replace(**{section: dataclasses.replace(current, **fields)}))

    def set_freeze(self, spec: FreezeSpec) -> None:
        self.set_config(self._config.replace(freeze=spec))

    def set_frozen(self, names: Iterable[str], lora_layers: Iterable[str] | None = None
                   ) -> None:
        """Freeze exactly ``names`` (what the layer tree edits), stored as a compact spec; with
        ``lora_layers``, adapt exactly those in the same edit."""
        if self._description is None:
            return
        spec = spec_for_frozen(self._description.names, names, self._description.head,
                               self._config.freeze.bn_frozen)
        config = self._config.replace(freeze=spec)
        if lora_layers is not None:
            config = config.replace(lora=self.lora_spec(lora_layers))
        self.set_config(config)

    def lora_spec(self, layers: Iterable[str]) -> LoraSpec:
        """The config's LoRA spec adapting exactly ``layers`` (as the fewest module names)."""
        adaptable = self.adaptable()
        chosen = set(layers) & set(adaptable)
        targets = compress(adaptable, chosen) if chosen else ()
        return dataclasses.replace(self._config.lora, targets=targets)

    def set_lora_layers(self, layers: Iterable[str]) -> None:
        """Adapt exactly ``layers`` (what the layer tree edits), stored as the fewest module
        names that reach them and no other adaptable layer."""
        self.set_config(self._config.replace(lora=self.lora_spec(layers)))

    def set_groups(self, groups: Sequence[ParamGroupSpec]) -> None:
        self.update("optim", groups=tuple(groups))

    def set_stages(self, stages: Sequence[StageSpec]) -> None:
        self.set_config(self._config.replace(stages=tuple(stages)))

    def set_scan(self, scan: DatasetScan | None) -> None:
        self._scan = scan
        self.scan_changed.emit(scan)

    def set_description(self, description: ModelDescription | None) -> None:
        """A new model structure: keep the freeze and LR choices whose parameters still exist."""
        self._description = description
        if description is not None:
            self.set_config(reconcile(self._config, description.names))
        self.description_changed.emit(description)

    # -- files ----------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        self._config.save(path)
        self._set_path(str(path))

    def open(self, path: str | Path) -> None:
        config = RunConfig.load(path)  # raises ConfigError with the file and field named
        self.set_config(config)
        self._set_path(str(path))

    def _set_path(self, path: str) -> None:
        if path != self._path:
            self._path = path
            self.path_changed.emit(path)


def reconcile(config: RunConfig, names: Sequence[str]) -> RunConfig:
    """Drop freeze patterns, group patterns and stage patterns that match nothing in ``names``
    (a changed backbone), so the rest of the user's choices carry over."""

    def alive(patterns: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(p for p in patterns if any(matches(n, p) for n in names))

    def fix_spec(spec: FreezeSpec) -> FreezeSpec:
        up_to_ok = spec.preset != "up_to" or any(matches(n, spec.up_to) for n in names)
        return FreezeSpec(preset=spec.preset if up_to_ok else "train_all",
                          up_to=spec.up_to if up_to_ok else "", freeze=alive(spec.freeze),
                          unfreeze=alive(spec.unfreeze), bn_frozen=spec.bn_frozen)

    groups = []
    for group in config.optim.groups:
        patterns = alive(group.patterns)
        if patterns:
            groups.append(dataclasses.replace(group, patterns=patterns))
    stages = tuple(dataclasses.replace(s, freeze=fix_spec(s.freeze)) for s in config.stages)
    lora = dataclasses.replace(config.lora, targets=alive(config.lora.targets))
    return config.replace(freeze=fix_spec(config.freeze), stages=stages, lora=lora,
                          optim=dataclasses.replace(config.optim, groups=tuple(groups)))
