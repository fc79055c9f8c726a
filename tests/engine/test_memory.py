"""An app session runs many fits: a finished one releases its model, optimizer and loaders."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

from studio.engine.config import (
    DataConfig,
    FreezeSpec,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from studio.engine.events import Callback, FitStarted, Outcome
from studio.engine.trainer import Trainer


class _Grab(Callback):
    """Weak references to what the fit built, taken while it runs."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.refs: dict[str, weakref.ref[Any]] = {}

    def on_fit_start(self, event: FitStarted) -> None:
        parts = self.trainer.parts
        assert parts is not None
        self.refs = {"model": weakref.ref(parts.model), "optimizer": weakref.ref(parts.optimizer),
                     "train loader": weakref.ref(parts.train_loader),
                     "val loader": weakref.ref(parts.val_loader)}


@pytest.mark.parametrize("preset", ["train_all", "head_only"])  # images, then cached features
def test_a_finished_fit_releases_its_model_optimizer_and_loaders(
        tiny_dataset: Path, tmp_path: Path, preset: str) -> None:
    config = RunConfig(
        data=DataConfig(root=str(tiny_dataset), image_size=32),
        model=ModelConfig(backbone="mobilenet_v3_small", weights="none"),
        freeze=FreezeSpec(preset=preset), optim=OptimConfig(schedule="none"),
        train=TrainConfig(epochs=2, batch_size=8, workers=0, device="cpu", precision="fp32",
                          tensorboard=False))
    trainer = Trainer(config, tmp_path / "run")
    grab = _Grab(trainer)
    trainer.callbacks.append(grab)

    assert trainer.fit().outcome is Outcome.COMPLETED
    gc.collect()
    alive = [name for name, ref in grab.refs.items() if ref() is not None]
    assert grab.refs and alive == [], f"still referenced after the fit: {alive}"
