"""Events: immutable facts about a run, made of plain numbers and strings (never tensors).

The trainer emits them to callbacks; the CLI prints them, the GUI plots them, the run directory
writer records them. Observers subclass :class:`Callback` and override the hooks they need.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FitStarted:
    run_dir: str
    epochs: int  # the last epoch number this fit will reach (1-based, inclusive)
    start_epoch: int  # 1-based; above 1 when resuming
    steps_per_epoch: int
    train_images: int
    val_images: int
    classes: tuple[str, ...]
    device: str  # e.g. "cpu", "cuda:0 (NVIDIA H100)"
    precision: str  # "fp32", "bf16", "fp16"
    channels_last: bool
    trainable_params: int
    total_params: int


@dataclass(frozen=True, slots=True)
class StageStarted:
    epoch: int
    index: int  # 0 = the run's own freeze spec, 1… = config.stages
    trainable_params: int
    total_params: int
    groups: tuple[str, ...]  # optimizer groups with trainable parameters


@dataclass(frozen=True, slots=True)
class BatchEnded:
    epoch: int
    step: int  # 1-based within the epoch
    steps: int
    global_step: int
    loss: float  # mean over the batches since the previous BatchEnded
    accuracy: float  # running training accuracy of this epoch, 0–1
    lr: dict[str, float]  # group name -> learning rate now
    images_per_second: float
    eta_seconds: float  # until the end of the fit, from this epoch's pace


@dataclass(frozen=True, slots=True)
class EpochEnded:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: dict[str, float]
    seconds: float
    images_per_second: float
    is_best: bool

    def to_json(self) -> dict[str, Any]:
        return {"event": "epoch", **{k: v for k, v in asdict(self).items() if k != "is_best"},
                "best": self.is_best}


@dataclass(frozen=True, slots=True)
class CheckpointSaved:
    epoch: int
    kind: str  # "last" or "best"
    path: str


@dataclass(frozen=True, slots=True)
class CacheReport:
    """What a cache is doing: being built, ready, or off (with the reason)."""

    kind: str  # "features" or "images"
    state: str  # "building", "ready", "reused" or "off"
    images: int = 0
    megabytes: float = 0.0
    seconds: float = 0.0
    detail: str = ""  # where it cuts the model / why it is off / where it is stored

    def describe(self) -> str:
        name = "feature cache" if self.kind == "features" else "image cache"
        if self.state == "off":
            return f"{name}: off ({self.detail})" if self.detail else f"{name}: off"
        if self.state == "building":
            return f"{name}: computing {self.images} images{_detail(self.detail)}"
        verb = "reused" if self.state == "reused" else "on"
        took = f" in {self.seconds:.1f} s" if self.state == "ready" and self.seconds else ""
        size = f"{self.megabytes:.1f}" if self.megabytes < 10 else f"{self.megabytes:.0f}"
        return (f"{name}: {verb}, {self.images} images, {size} MB{took}"
                f"{_detail(self.detail)}")


def _detail(text: str) -> str:
    return f" ({text})" if text else ""


@dataclass(frozen=True, slots=True)
class WarningIssued:
    message: str


@dataclass(frozen=True, slots=True)
class FitEnded:
    outcome: Outcome
    message: str  # one sentence: what happened
    epochs_completed: int  # the last completed epoch number
    best_epoch: int | None
    best_metric: float | None  # of config.train.monitor
    monitor: str
    run_dir: str
    seconds: float


class Callback:
    """Observer of a fit. Every hook is a no-op; override what you need. Hooks run on the
    training thread, so they must be quick (hand work to another thread if it is not)."""

    def on_fit_start(self, event: FitStarted) -> None: ...

    def on_stage_start(self, event: StageStarted) -> None: ...

    def on_batch_end(self, event: BatchEnded) -> None: ...

    def on_epoch_end(self, event: EpochEnded) -> None: ...

    def on_checkpoint(self, event: CheckpointSaved) -> None: ...

    def on_warning(self, event: WarningIssued) -> None: ...

    def on_cache(self, event: CacheReport) -> None: ...

    def on_fit_end(self, event: FitEnded) -> None: ...
