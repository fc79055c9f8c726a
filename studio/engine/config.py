"""RunConfig: one frozen value that describes a run completely, with a TOML round-trip.

The GUI edits a RunConfig, the CLI builds one from flags, the trainer runs one. Every dataclass
validates itself in ``__post_init__`` with a message naming the field; ``from_dict`` adds the
dotted path (``optim.groups[1].lr``) so a user can find the line in their file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import tempfile
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from studio.engine.errors import ConfigError

SCHEMA_VERSION = 1

AUGMENT_PRESETS = ("none", "light", "standard", "strong")
BALANCE_MODES = ("none", "loss", "sampler")
HEAD_KINDS = ("linear", "mlp")
FREEZE_PRESETS = ("train_all", "head_only", "up_to")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine", "onecycle")
LOSSES = ("cross_entropy", "focal")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MONITORS = ("val_acc", "val_loss", "macro_f1", "balanced_acc")  # all higher-is-better but loss
CACHE_MODES = ("auto", "off")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _finite(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    _require(math.isfinite(value), f"{name} must be a finite number; got {value!r}")
    if low is not None:
        _require(value >= low, f"{name} must be at least {low}; got {value}")
    if high is not None:
        _require(value <= high, f"{name} must be at most {high}; got {value}")


@dataclass(frozen=True, slots=True)
class DataConfig:
    """Where the images are and how they are split and augmented."""

    root: str = ""
    val_fraction: float = 0.2
    augment: str = "standard"
    balance: str = "none"  # none | loss (class-weighted loss) | sampler (weighted sampler)
    image_size: int | None = None  # None: the chosen weights' crop size (224 if unknown)

    def __post_init__(self) -> None:
        _finite("val_fraction", self.val_fraction, 0.0, 0.9)
        _choice("augment", self.augment, AUGMENT_PRESETS)
        _choice("balance", self.balance, BALANCE_MODES)
        if self.image_size is not None:
            _require(16 <= self.image_size <= 2048,
                     f"image_size must be between 16 and 2048 pixels; got {self.image_size}")


@dataclass(frozen=True, slots=True)
class HeadConfig:
    """The classifier head that replaces the backbone's ImageNet head."""

    kind: str = "linear"
    hidden: int = 512
    dropout: float = 0.2

    def __post_init__(self) -> None:
        _choice("kind", self.kind, HEAD_KINDS)
        _require(self.hidden >= 1, f"hidden must be a positive size; got {self.hidden}")
        _finite("dropout", self.dropout, 0.0, 0.99)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Which backbone, which weights, which head."""

    backbone: str = "resnet18"
    weights: str = "default"  # default | none | path to .pth/.pt/.safetensors
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        _require(bool(self.backbone), "backbone must name a torchvision model, e.g. resnet18")
        _require(bool(self.weights), "weights must be 'default', 'none' or a file path")


@dataclass(frozen=True, slots=True)
class FreezeSpec:
    """Which parameters are frozen: a preset, then ``freeze`` globs, then ``unfreeze`` globs.

    A glob matches a parameter name (``layer1.0.conv1.weight``) or any module prefix of it
    (``layer1`` matches everything under ``layer1``).
    """

    preset: str = "train_all"
    up_to: str = ""  # module name for the "up_to" preset: it and everything before it is frozen
    freeze: tuple[str, ...] = ()
    unfreeze: tuple[str, ...] = ()
    bn_frozen: bool = True  # BatchNorm layers whose parameters are all frozen keep their statistics

    def __post_init__(self) -> None:
        _choice("preset", self.preset, FREEZE_PRESETS)
        if self.preset == "up_to":
            _require(bool(self.up_to), "up_to must name a module when preset is 'up_to'")


@dataclass(frozen=True, slots=True)
class ParamGroupSpec:
    """A named group of parameters (globs, first matching group wins) with its own LR and decay."""

    name: str
    patterns: tuple[str, ...]
    lr: float
    weight_decay: float | None = None  # None: the optimizer's weight_decay

    def __post_init__(self) -> None:
        _require(bool(self.name), "a parameter group needs a name")
        _finite("lr", self.lr, 0.0, 10.0)
        if self.weight_decay is not None:
            _finite("weight_decay", self.weight_decay, 0.0, 1.0)


@dataclass(frozen=True, slots=True)
class StageSpec:
    """From 1-based ``epoch`` on, use this freeze spec and scale group learning rates."""

    epoch: int
    freeze: FreezeSpec = field(default_factory=FreezeSpec)
    lr_scale: dict[str, float] = field(default_factory=dict)  # group name -> factor; "*" = all

    def __post_init__(self) -> None:
        _require(self.epoch >= 2, f"a stage's epoch must be 2 or later; got {self.epoch}")
        for group, scale in self.lr_scale.items():
            _finite(f"lr_scale[{group!r}]", scale, 0.0, 1000.0)


@dataclass(frozen=True, slots=True)
class OptimConfig:
    """Optimizer, base learning rate, parameter groups and schedule."""

    optimizer: str = "adamw"
    lr: float = 1e-3  # base learning rate: the default group's, and the head's in presets
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    groups: tuple[ParamGroupSpec, ...] = ()
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 10  # epochs between decays for the step schedule
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _finite("lr", self.lr, 0.0, 10.0)
        _require(self.lr > 0, "lr must be greater than 0")
        _finite("weight_decay", self.weight_decay, 0.0, 1.0)
        _finite("momentum", self.momentum, 0.0, 0.999)
        _choice("schedule", self.schedule, SCHEDULES)
        _finite("warmup_epochs", self.warmup_epochs, 0.0, 1000.0)
        _require(self.step_size >= 1, f"step_size must be at least 1; got {self.step_size}")
        _finite("gamma", self.gamma, 0.0, 1.0)
        names = [group.name for group in self.groups]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        _require(not duplicates, f"parameter group names must be unique; repeated: {duplicates}")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """How the loop runs: length, batch, loss, device and precision, reproducibility."""

    epochs: int = 10
    batch_size: int = 32
    loss: str = "cross_entropy"
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    accumulate: int = 1
    early_stopping: int = 0  # patience in epochs; 0 = off
    monitor: str = "val_acc"
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    workers: int = -1  # -1: chosen from the machine
    seed: int = 0
    deterministic: bool = False
    # Run the frozen prefix once per image and train on its cached output (see features.py):
    # "auto" uses it when the frozen layers come first and images are not randomly augmented.
    feature_cache: str = "auto"
    cache_views: int = 0  # with augmentation on: cache this many augmented views per image
    image_cache: str = "auto"  # keep decoded, resized images in memory when they fit
    compile: bool = False  # torch.compile the model (opt-in: compiling takes a while)
    # Processes on this machine: one per GPU on CUDA (or CPU processes); above 1 the run is
    # launched through torchrun as a DistributedDataParallel run. batch_size is per process.
    processes: int = 1
    sync_bn: bool = False  # with processes > 1 on CUDA: BatchNorm statistics over all processes
    tensorboard: bool = True  # write TensorBoard event files when the tensorboard package is there
    # MixUp / CutMix (engine/mixing.py): alpha of each (0 = off), the share of batches mixed,
    # CutMix's share when both are on, and the last epoch that mixes (0 = every epoch)
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    mix_switch: float = 0.5
    mix_until: int = 0
    # Model EMA (engine/ema.py): an exponential moving average of the weights, updated after
    # every optimizer step with this decay (0 = off; e.g. 0.999), validated beside the raw
    # weights each epoch; the better of the two is what best.pt holds. With ema_warmup the
    # decay of update t (0-based) is min(ema, (1 + t) / (10 + t)), so a short run's average
    # is not stuck at the starting weights.
    ema: float = 0.0
    ema_warmup: bool = True

    def __post_init__(self) -> None:
        _require(1 <= self.epochs <= 100_000,
                 f"epochs must be between 1 and 100000; got {self.epochs}")
        _require(1 <= self.batch_size <= 65_536,
                 f"batch_size must be between 1 and 65536; got {self.batch_size}")
        _choice("loss", self.loss, LOSSES)
        _finite("label_smoothing", self.label_smoothing, 0.0, 0.99)
        _finite("grad_clip", self.grad_clip, 0.0)
        _require(self.accumulate >= 1, f"accumulate must be at least 1; got {self.accumulate}")
        _require(self.early_stopping >= 0, "early_stopping must be 0 (off) or a patience")
        _choice("monitor", self.monitor, MONITORS)
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _require(self.workers >= -1, f"workers must be -1 (auto) or more; got {self.workers}")
        _choice("feature_cache", self.feature_cache, CACHE_MODES)
        _choice("image_cache", self.image_cache, CACHE_MODES)
        _require(0 <= self.cache_views <= 64,
                 f"cache_views must be between 0 and 64; got {self.cache_views}")
        _require(1 <= self.processes <= 1024,
                 f"processes must be between 1 and 1024; got {self.processes}")
        _finite("mixup", self.mixup, 0.0, 10.0)
        _finite("cutmix", self.cutmix, 0.0, 10.0)
        _finite("mix_prob", self.mix_prob, 0.0, 1.0)
        _finite("mix_switch", self.mix_switch, 0.0, 1.0)
        _require(self.mix_until >= 0, f"mix_until must be 0 (every epoch) or an epoch; got "
                                      f"{self.mix_until}")
        _finite("ema", self.ema)
        _require(self.ema == 0 or 0.5 <= self.ema < 1,
                 f"ema must be 0 (off) or a decay from 0.5 up to but not including 1, such as "
                 f"0.999; got {self.ema}")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything a run needs. ``studio train --config`` runs one headless."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    freeze: FreezeSpec = field(default_factory=FreezeSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stages: tuple[StageSpec, ...] = ()
    train: TrainConfig = field(default_factory=TrainConfig)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        epochs = [stage.epoch for stage in self.stages]
        _require(epochs == sorted(set(epochs)),
                 f"stages must have increasing, distinct epochs; got {epochs}")

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        version = raw.get("schema_version")
        if version is None:
            raise ConfigError("schema_version is missing; is this a Finetune Studio run config?")
        if not isinstance(version, int) or version < 1:
            raise ConfigError(f"schema_version must be a positive integer; got {version!r}")
        if version > SCHEMA_VERSION:
            raise ConfigError(f"this config has schema_version {version}, newer than this "
                              f"Finetune Studio understands ({SCHEMA_VERSION}); please upgrade")
        return from_dict(cls, raw)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str, source: str = "config") -> RunConfig:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{source} is not valid TOML: {error}") from error
        try:
            return cls.from_dict(raw)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from error

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_text(Path(path), self.to_toml())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as error:
            raise ConfigError(f"config file {path} does not exist") from error
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"config file {path} cannot be read: {error}") from error
        return cls.from_toml(text, source=str(path))


FILE_MODE = 0o644


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder and ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; a run folder is ordinary user data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Generic dataclass <-> plain dict conversion (TOML has no None: None fields are left out)

T = TypeVar("T")


def to_dict(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is not None:
                out[f.name] = to_dict(item)
        return out
    if isinstance(value, tuple | list):
        return [to_dict(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_dict(item) for key, item in value.items()}
    return value


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved once per class: resolving them is most of loading a config (listing 500 runs
    loads 500)."""
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], raw: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from ``raw``, naming the dotted path of any bad field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'} must be a table; got {type(raw).__name__}")
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown field {_join(path, unknown[0])!r}{where}; "
                          f"known fields are {', '.join(sorted(names))}")
    required = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    absent = [name for name in required if name not in raw]
    if absent:
        raise ConfigError(f"{_join(path, absent[0])} is required")
    kwargs = {key: _convert(hints[key], value, _join(path, key)) for key, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as error:
        message = str(error)
        field_name = message.split(" ", 1)[0].split("[", 1)[0]
        if path and field_name in names:  # "lr must be …" → "optim.groups[1].lr must be …"
            raise ConfigError(f"{path}.{message}") from error
        raise ConfigError(f"{path + ': ' if path else ''}{message}") from error


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        return _convert(options[0], value, path)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path} must be a list; got {value!r}")
        return tuple(_convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a table; got {value!r}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be a whole number; got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path} must be a number; got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be text; got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {hint!r}")  # a bug, not a user error
