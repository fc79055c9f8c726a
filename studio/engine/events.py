"""Events: immutable facts about a run, made of plain numbers and strings (never tensors).

The trainer emits them to callbacks; the CLI prints them, the GUI plots them, the run directory
writer records them. Observers subclass :class:`Callback` and override the hooks they need.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import typing
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
    processes: int = 1  # the world size: processes training together
    adapter_params: int = 0  # LoRA adapters' parameters (0: no LoRA)
    adapted_layers: int = 0


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
class LayerStats:
    """How one optimizer step moved each trainable parameter, sampled at most twice a second
    (:mod:`studio.engine.learning`). Keyed by the model's full parameter names; frozen
    parameters (and any without a gradient that step) are absent. Norms are L2 over the whole
    tensor; a module's figures are those of its parameters taken together (sqrt of the sum of
    squares), which these three make possible and a ratio alone would not."""

    global_step: int  # optimizer steps done, counting this one (as BatchEnded.global_step)
    grad_norm: dict[str, float]  # ||grad||, unscaled, before clipping
    update_norm: dict[str, float]  # ||w_after - w_before|| of this step
    weight_norm: dict[str, float]  # ||w_before||

    def update_ratio(self, name: str) -> float:
        """||Δw|| / ||w|| of one parameter (about 1e-3 for a layer that learns steadily)."""
        weight = self.weight_norm[name]
        return self.update_norm[name] / weight if weight > 0 else float("inf")


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
    val_images: int = 0  # validation images counted (over every process, each once)
    macro_f1: float = float("nan")  # over the classes with validation images
    balanced_acc: float = float("nan")  # the mean recall over those classes
    # With model EMA (train.ema): the averaged weights' figures over the same images (NaN when
    # EMA is off), and which of the two sets the monitor preferred this epoch ("" when off)
    ema_val_loss: float = float("nan")
    ema_val_acc: float = float("nan")
    ema_macro_f1: float = float("nan")
    ema_balanced_acc: float = float("nan")
    weights: str = ""  # "raw" or "ema": what this epoch's checkpoint offers evaluate and export

    def to_json(self) -> dict[str, Any]:
        """The metrics.jsonl line: a run without EMA has no ema_* or weights entries."""
        skip = {"is_best"} if self.weights else {"is_best", "weights", *_EMA_FIGURES}
        return {"event": "epoch", **{k: v for k, v in asdict(self).items() if k not in skip},
                "best": self.is_best}


_EMA_FIGURES = ("ema_val_loss", "ema_val_acc", "ema_macro_f1", "ema_balanced_acc")


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
    best_weights: str = ""  # with model EMA: "raw" or "ema", the weights best.pt holds


def weights_label(weights: str) -> str:
    """How a run names a set of weights to a person ("raw" or "ema", as checkpoints do)."""
    return "EMA weights" if weights == "ema" else "raw weights"


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

    def on_layer_stats(self, event: LayerStats) -> None:
        """Only when some callback overrides this does the trainer sample (see learning.py)."""

    def on_fit_end(self, event: FitEnded) -> None: ...


# ---------------------------------------------------------------------------------------------
# Events as JSON lines: how a child process (a multi-process run) tells the window what happens

HOOKS: dict[str, type] = {
    "on_fit_start": FitStarted, "on_stage_start": StageStarted, "on_batch_end": BatchEnded,
    "on_epoch_end": EpochEnded, "on_checkpoint": CheckpointSaved, "on_warning": WarningIssued,
    "on_cache": CacheReport, "on_layer_stats": LayerStats, "on_fit_end": FitEnded,
}


def event_to_line(hook: str, event: Any) -> str:
    """One JSON line ``{"hook": ..., "event": {...}}`` (non-finite floats as null)."""
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    payload = {k: _plain(v) for k, v in fields.items()}
    return json.dumps({"hook": hook, "event": payload}, ensure_ascii=False, allow_nan=False)


def event_from_line(line: str) -> tuple[str, Any] | None:
    """(hook, event) from :func:`event_to_line`'s output; None for any other line."""
    try:
        record = json.loads(line)
        hook = record["hook"]
        cls = HOOKS[hook]
        raw = dict(record["event"])
    except (ValueError, KeyError, TypeError):
        return None
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        value, hint = raw[f.name], hints[f.name]
        if value is None and hint in (float, float | None):
            value = float("nan") if hint is float else None
        elif hint is Outcome:
            value = Outcome(value)
        elif typing.get_origin(hint) is tuple:
            value = tuple(value)
        values[f.name] = value
    try:
        return hook, cls(**values)
    except TypeError:
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class LineEmitter(Callback):
    """Writes every event as a JSON line to a stream (rank 0's stdout under torchrun)."""

    def __init__(self, stream: typing.TextIO) -> None:
        self.stream = stream

    def _send(self, hook: str, event: Any) -> None:
        self.stream.write(event_to_line(hook, event) + "\n")
        self.stream.flush()

    def on_fit_start(self, event: FitStarted) -> None:
        self._send("on_fit_start", event)

    def on_stage_start(self, event: StageStarted) -> None:
        self._send("on_stage_start", event)

    def on_batch_end(self, event: BatchEnded) -> None:
        self._send("on_batch_end", event)

    def on_epoch_end(self, event: EpochEnded) -> None:
        self._send("on_epoch_end", event)

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        self._send("on_checkpoint", event)

    def on_warning(self, event: WarningIssued) -> None:
        self._send("on_warning", event)

    def on_cache(self, event: CacheReport) -> None:
        self._send("on_cache", event)

    def on_layer_stats(self, event: LayerStats) -> None:  # ~3 floats per parameter, 2/s
        self._send("on_layer_stats", event)

    def on_fit_end(self, event: FitEnded) -> None:
        self._send("on_fit_end", event)
