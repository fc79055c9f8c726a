"""Open a finished run folder: its checkpoint rebuilt into a model, labels, preprocessing, config.

Export, evaluation and prediction all start here, so a run is read one way. Errors are one
sentence naming the folder or file; ``action`` words them for the caller ("exporting").
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from studio.engine.backbones import backbone_info, build_model, is_weights_file
from studio.engine.checkpoint import load_checkpoint
from studio.engine.config import ConfigError, RunConfig
from studio.engine.data import Preprocessing
from studio.engine.errors import StudioError

CHECKPOINTS = ("best", "last")


class RunError(StudioError):
    """A run folder or checkpoint that cannot be used."""


@dataclass
class OpenedRun:
    run_dir: Path
    checkpoint: str
    checkpoint_path: Path
    model: nn.Module  # in eval mode, on the CPU
    labels: list[str]
    preprocessing: dict[str, Any]
    config: RunConfig
    config_text: str
    epoch: int | None
    best: dict[str, Any]
    data_root: str

    def prep(self) -> Preprocessing:
        return preprocessing_from_json(self.preprocessing)


def open_run(run_dir: str | os.PathLike[str], checkpoint: str = "best",
             action: str = "using it", error: type[StudioError] = RunError) -> OpenedRun:
    """Rebuild a run's architecture (weights "none") and load its checkpoint strictly."""
    from studio.engine.trainer import RunPaths

    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint must be best or last; got {checkpoint!r}")
    paths = RunPaths(run_dir)
    if not paths.root.is_dir():
        raise error(f"run folder {paths.root} does not exist; pass the folder that "
                    f"`studio train --out` wrote")
    if not paths.last.is_file():
        raise error(f"{paths.root} holds no checkpoint (checkpoints/last.pt); train at "
                    f"least one epoch before {action}")
    path = paths.best if checkpoint == "best" else paths.last
    if not path.is_file():
        raise error(f"{paths.root} has no best checkpoint ({path.name}); use the last "
                    f"one with --checkpoint last")
    payload = load_checkpoint(path)
    try:
        text = str(payload["config"])
        labels = [str(name) for name in payload["labels"]]
        prep = dict(payload["preprocessing"])
        state = payload["model"]
    except (KeyError, TypeError, ValueError) as missing:
        raise error(f"checkpoint {path} lacks its {missing} entry; it was not written by "
                    f"this version of Finetune Studio") from missing
    config = RunConfig.from_toml(text, source=f"the config inside {path}")
    backbone = payload.get("backbone", config.model.backbone)
    if backbone != config.model.backbone:
        raise error(f"checkpoint {path} holds backbone {backbone!r} but its config names "
                    f"{config.model.backbone!r}")
    model = rebuild_model(config, labels, prep, state, path, error)
    return OpenedRun(paths.root, checkpoint, path, model, labels, prep, config, text,
                     payload.get("epoch"), dict(payload.get("best") or {}),
                     data_root(paths.config, config))


def rebuild_model(config: RunConfig, labels: list[str], prep: dict[str, Any],
                  state: dict[str, torch.Tensor], path: Path,
                  error: type[StudioError] = RunError) -> nn.Module:
    architecture = config.model.__class__(backbone=config.model.backbone, weights="none",
                                          head=config.model.head)
    size = config.data.image_size or int(prep["crop"])
    built = build_model(architecture, len(labels), size)
    model = built.model
    # torchvision turns on input re-normalisation for Inception v3 and GoogLeNet when it loads
    # their ImageNet weights; it is no parameter, so a rebuild without weights must set it.
    if backbone_info(config.model.backbone).family in ("inception", "googlenet") \
            and config.model.weights != "none" and not is_weights_file(config.model.weights):
        model.transform_input = True  # type: ignore[assignment]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as failure:
        first = str(failure).strip().splitlines()[0] if str(failure).strip() else "no detail"
        raise error(f"checkpoint {path} does not fit {config.model.backbone} with "
                    f"{len(labels)} classes ({first})") from failure
    return model.eval()


def data_root(config_path: Path, config: RunConfig) -> str:
    """The trainer writes the resolved dataset folder to config.toml; prefer it."""
    with contextlib.suppress(StudioError, OSError):
        saved = RunConfig.load(config_path)
        if saved.data.root:
            return saved.data.root
    return config.data.root


def preprocessing_from_json(prep: dict[str, Any]) -> Preprocessing:
    return Preprocessing(int(prep["resize"]), int(prep["crop"]),
                         tuple(float(v) for v in prep["mean"]),  # type: ignore[arg-type]
                         tuple(float(v) for v in prep["std"]),  # type: ignore[arg-type]
                         str(prep.get("interpolation", "bilinear")))
