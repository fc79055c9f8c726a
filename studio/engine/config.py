"""RunConfig: one frozen value that describes a run completely, with a TOML round-trip.

The GUI edits a RunConfig, the CLI builds one from flags, the trainer runs one. Every dataclass
validates itself in ``__post_init__`` with a message naming the field; ``from_dict`` adds the
dotted path (``optim.groups[1].lr``) so a user can find the line in their file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from studio.engine.config_io import atomic_write_text, from_dict, to_dict
from studio.engine.errors import ConfigError
from studio.engine.fields import Described, check, described, setting

SCHEMA_VERSION = 1

FREEZE_PRESETS = ("train_all", "head_only", "up_to")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


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
    val_fraction: float = setting(
        0.2, "Validation share", "Share of each class's images held out for validation.",
        low=0.0, high=0.9, metavar="F")
    augment: str = setting(
        "standard", "Augmentation", "Random changes to training images that help the model "
        "generalise: none, light (crops, flips), standard (and small colour changes) or strong "
        "(TrivialAugment and random erasing).",
        choices=(("none", "none"), ("light", "light"), ("standard", "standard"),
                 ("strong", "strong")))
    balance: str = setting(
        "none", "Class balance", "For imbalanced classes: a class-weighted loss or a weighted "
        "sampler.", choices=(("none", "none"), ("loss", "class-weighted loss"),
                             ("sampler", "weighted sampler")))
    image_size: int | None = setting(
        None, "Image size", "Side of the square the images are resized to, in pixels; auto "
        "uses the backbone weights' own size (224 if unknown).", low=16, high=2048, step=32,
        off="auto", suffix=" px", unit="pixels", metavar="N", tab="Loop")

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True, slots=True)
class HeadConfig:
    """The classifier head that replaces the backbone's ImageNet head."""

    kind: str = setting("linear", "Head", "The classifier head: one linear layer, or a small "
                        "MLP (linear, ReLU, dropout, linear).",
                        choices=(("linear", "linear"), ("mlp", "small MLP")), flag="head")
    hidden: int = setting(512, "Hidden units", "Width of the MLP head's hidden layer.",
                          low=1, high=65_536, flag="head-hidden", metavar="N")
    dropout: float = setting(0.2, "Head dropout", "Dropout before the MLP head's last layer.",
                             low=0.0, high=0.99, flag="head-dropout", metavar="P")

    def __post_init__(self) -> None:
        check(self)


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
        _require(self.preset in FREEZE_PRESETS, f"preset must be one of "
                 f"{', '.join(FREEZE_PRESETS)}; got {self.preset!r}")
        if self.preset == "up_to":
            _require(bool(self.up_to), "up_to must name a module when preset is 'up_to'")


@dataclass(frozen=True, slots=True)
class LoraSpec:
    """Low-rank adapters (LoRA, through peft) on the layers of the modules ``targets`` names.

    A target glob follows the freeze spec's rule (a module name or any module prefix of it);
    every ``nn.Linear``, ``nn.Conv2d`` and ``nn.MultiheadAttention`` under a matching module
    gets an adapter, except in the head, which trains as usual. The adapted layers' own weights
    stay frozen; the adapters always train. ``targets`` empty: no LoRA.
    """

    targets: tuple[str, ...] = ()
    rank: int = setting(8, "LoRA rank", "Rank of each adapter: its two small matrices have "
                        "this many rows and columns; higher adapts more, with more parameters.",
                        low=1, high=1024, flag="lora-rank", metavar="R")
    alpha: float = setting(16.0, "LoRA alpha", "Scale of the adapters: their output is "
                           "multiplied by alpha / rank (16 with rank 8 doubles it).",
                           low=0.01, high=100_000.0, decimals=1, flag="lora-alpha",
                           metavar="A")
    dropout: float = setting(0.0, "LoRA dropout", "Dropout on the adapters' input while "
                             "training.", low=0.0, high=0.9, flag="lora-dropout", metavar="P")

    def __post_init__(self) -> None:
        check(self)
        _require(all(isinstance(t, str) and t for t in self.targets),
                 f"lora targets must be module names or globs; got {list(self.targets)}")

    @property
    def enabled(self) -> bool:
        return bool(self.targets)


MAX_LR = 10.0  # the highest learning rate a config accepts, for a group or the base
MAX_WEIGHT_DECAY = 1.0  # the same for weight decay


@dataclass(frozen=True, slots=True)
class ParamGroupSpec:
    """A named group of parameters (globs, first matching group wins) with its own LR and decay."""

    name: str
    patterns: tuple[str, ...]
    lr: float
    weight_decay: float | None = None  # None: the optimizer's weight_decay

    def __post_init__(self) -> None:
        _require(bool(self.name), "a parameter group needs a name")
        _finite("lr", self.lr, 0.0, MAX_LR)
        if self.weight_decay is not None:
            _finite("weight_decay", self.weight_decay, 0.0, MAX_WEIGHT_DECAY)


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

    optimizer: str = setting(
        "adamw", "Optimizer", "AdamW is a good default for fine-tuning, SGD with momentum a "
        "classic.", choices=(("sgd", "SGD"), ("adam", "Adam"), ("adamw", "AdamW")), tab="Loop")
    # the base learning rate: the default group's, and the head's in presets
    lr: float = setting(1e-3, "Base learning rate", "Learning rate of every parameter no "
                        "group matches.", low=0.0, high=MAX_LR, flag="base-lr", metavar="LR")
    weight_decay: float = setting(1e-4, "Weight decay", "Decoupled weight decay (AdamW) or L2 "
                                  "penalty (SGD, Adam) of every group without its own.",
                                  low=0.0, high=MAX_WEIGHT_DECAY, metavar="WD")
    momentum: float = setting(0.9, "Momentum", "SGD's momentum.", low=0.0, high=0.999,
                              metavar="M")
    nesterov: bool = setting(False, "Nesterov momentum", "SGD with Nesterov momentum.")
    groups: tuple[ParamGroupSpec, ...] = ()
    schedule: str = setting(
        "cosine", "LR schedule", "How the learning rate changes over the run (after the "
        "warm-up, if set).", choices=(("none", "constant"), ("step", "step decay"),
                                      ("cosine", "cosine"), ("onecycle", "one-cycle")),
        tab="Loop")
    warmup_epochs: float = setting(
        0.0, "Warm-up", "Epochs over which the learning rate ramps up from near zero "
        "(one-cycle has its own warm-up).", low=0.0, high=1000.0, step=0.5, decimals=1,
        off="none", suffix=" epochs", metavar="E", tab="Loop")
    step_size: int = setting(10, "Step size", "Epochs between decays of the step schedule.",
                             low=1, high=100_000, metavar="EPOCHS")
    gamma: float = setting(0.1, "Step factor", "What the step schedule multiplies the rate "
                           "by at each decay.", low=0.0, high=1.0, metavar="F")

    def __post_init__(self) -> None:
        check(self)
        _require(self.lr > 0, "lr must be greater than 0")
        names = [group.name for group in self.groups]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        _require(not duplicates, f"parameter group names must be unique; repeated: {duplicates}")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """How the loop runs: length, batch, loss, device and precision, reproducibility."""

    epochs: int = setting(10, "Epochs", "How many passes over the training images.",
                          low=1, high=100_000, metavar="N", tab="Loop")
    batch_size: int = setting(32, "Batch size", "Images per step (per process); lower it if "
                              "memory runs out.", low=1, high=65_536, step=8, metavar="N",
                              tab="Loop")
    loss: str = setting("cross_entropy", "Loss", "Cross-entropy, or focal loss, which "
                        "down-weights the easy examples.",
                        choices=(("cross_entropy", "cross-entropy"), ("focal", "focal")),
                        tab="Recipe")
    label_smoothing: float = setting(
        0.0, "Label smoothing", "Share of each target spread over the other classes; 0.1 is "
        "common and guards against over-confidence.", low=0.0, high=0.99, step=0.05,
        off="off", metavar="S", tab="Recipe")
    grad_clip: float = setting(
        0.0, "Gradient clipping", "Largest gradient norm a step may take (0: off); 1 or 5 "
        "tames spikes.", low=0.0, high=1e6, step=0.5, off="off", metavar="NORM", tab="Recipe")
    accumulate: int = setting(
        1, "Accumulate", "Batches whose gradients add up to one optimizer step: a larger "
        "effective batch in the same memory.", low=1, high=4096, off="off", suffix=" batches",
        metavar="N", tab="Recipe")
    # MixUp / CutMix (engine/mixing.py): alpha of each (0 = off), the share of batches mixed,
    # CutMix's share when both are on, and the last epoch that mixes (0 = every epoch)
    mixup: float = setting(
        0.0, "MixUp", "Train on blends of two images and their labels, weighted by "
        "Beta(α, α); α 0.2–0.4 is typical, 0 is off.", low=0.0, high=10.0, step=0.1,
        off="off", metavar="ALPHA", tab="Recipe")
    cutmix: float = setting(
        0.0, "CutMix", "Paste a box of another image into each image, labels weighted by "
        "area; α 1.0 is typical, 0 is off.", low=0.0, high=10.0, step=0.1, off="off",
        metavar="ALPHA", tab="Recipe")
    mix_prob: float = setting(1.0, "Mixed share", "Share of the batches MixUp/CutMix mix.",
                              low=0.0, high=1.0, step=0.1, metavar="P", tab="Recipe")
    mix_switch: float = setting(
        0.5, "CutMix share", "With both on: the chance a mixed batch gets CutMix rather than "
        "MixUp.", low=0.0, high=1.0, step=0.1, metavar="P", tab="Recipe")
    mix_until: int = setting(
        0, "Mix until", "The last epoch that mixes; plain images after it (0: every epoch).",
        low=0, high=100_000, off="every epoch", metavar="EPOCH",
        tab="Recipe")
    # Model EMA (engine/ema.py): an exponential moving average of the weights, updated after
    # every optimizer step, validated beside the raw weights each epoch; the better of the two
    # is what best.pt holds. With ema_warmup the decay of update t (0-based) is
    # min(ema, (1 + t) / (10 + t)), so a short run's average is not stuck at the start.
    ema: float = setting(
        0.0, "Model EMA", "Keep a moving average of the weights with this decay, e.g. 0.999 "
        "(0: off); it is validated beside them each epoch, and the better of the two is what "
        "best.pt holds.", low=0.0, high=0.99999, step=0.001, decimals=5, off="off",
        metavar="DECAY", tab="Recipe")
    ema_warmup: bool = setting(
        True, "EMA warm-up", "With EMA: start with a low decay, min(DECAY, (1+t)/(10+t)) at "
        "update t, so a short run averages its recent steps.", tab="Recipe")
    monitor: str = setting(
        "val_acc", "Monitor", "What picks the best checkpoint and drives early stopping; "
        "macro F1 or balanced accuracy suit imbalanced classes.",
        choices=(("val_acc", "validation accuracy"), ("val_loss", "validation loss"),
                 ("macro_f1", "macro F1"), ("balanced_acc", "balanced accuracy")),
        tab="Recipe")
    early_stopping: int = setting(
        0, "Early stopping", "Stop when the monitored metric has not improved for this many "
        "epochs; off trains them all.", low=0, high=100_000, off="off", suffix=" epochs",
        metavar="PATIENCE", hint="0 (off) or a patience", tab="Recipe")
    device: str = setting("auto", "Device", "Where training runs; auto prefers a GPU.",
                          choices=(("auto", "auto"), ("cpu", "CPU"), ("cuda", "CUDA GPU"),
                                   ("mps", "Apple GPU")), tab="Device")
    precision: str = setting(
        "auto", "Precision", "Number format: bf16/fp16 are faster on GPUs; auto picks the best "
        "this device supports.", choices=(("auto", "auto"), ("fp32", "fp32"), ("bf16", "bf16"),
                                          ("fp16", "fp16")), tab="Device")
    # Processes on this machine: one per GPU on CUDA (or CPU processes); above 1 the run is
    # launched through torchrun as a DistributedDataParallel run. batch_size is per process.
    processes: int = setting(
        1, "Processes", "Processes training together on this machine: one per GPU on CUDA, or "
        "CPU processes. Each takes its own batch of the batch size.", low=1, high=1024,
        flag=None, tab="Device")  # its flag is torchrun's --nproc-per-node (cli/launch.py)
    sync_bn: bool = setting(
        False, "Synchronise BatchNorm", "With several processes on CUDA: BatchNorm statistics "
        "over all processes.", flag=None, tab="Device")  # a scale-out flag (cli/launch.py)
    channels_last: bool = setting(True, "Channels-last memory format",
                                  "Faster convolutions on GPUs and recent CPUs.", tab="Device")
    compile: bool = setting(False, "torch.compile the model",
                            "Faster steps after a compile that takes a while.", tab="Device")
    workers: int = setting(-1, "Loader workers", "Processes reading images (-1: chosen from "
                           "the machine).", low=-1, high=256, off="auto", metavar="N",
                           hint="-1 (auto) or more", tab="Device")
    # Run the frozen prefix once per image and train on its cached output (see features.py):
    # "auto" uses it when the frozen layers come first and images are not randomly augmented.
    feature_cache: str = setting(
        "auto", "Feature cache", "Run the frozen layers once per image and train the rest on "
        "their saved output: many times faster when only the last layers train. Used when the "
        "frozen layers come first and images are not randomly augmented (or augmented views "
        "are cached).", choices=(("auto", "auto: when frozen layers come first"),
                                 ("off", "off")), tab="Speed & records")
    cache_views: int = setting(
        0, "Augmented views", "With augmentation on: how many augmented views of every image "
        "to pass through the frozen layers and cache; none trains on images as usual.",
        low=0, high=64, off="none", suffix=" views", metavar="K", tab="Speed & records")
    image_cache: str = setting(
        "auto", "Image cache", "Decode and resize every image once and keep it in memory "
        "when they fit, so epochs after the first skip reading the files.",
        choices=(("auto", "auto: when the images fit in memory"), ("off", "off")),
        tab="Speed & records")
    seed: int = setting(0, "Seed", "Seed of the random split, shuffling and augmentation; "
                        "the same seed repeats a run.", low=0, high=2**31 - 1,
                        tab="Speed & records")
    deterministic: bool = setting(
        False, "Deterministic algorithms", "Bit-identical re-runs on the same machine, at "
        "some speed.", tab="Speed & records")
    tensorboard: bool = setting(
        True, "Write TensorBoard event files", "Write the run's curves, settings and "
        "confusion matrix into its tensorboard/ folder (when the tensorboard package is "
        "installed); tensorboard --logdir on the runs folder shows every run.",
        tab="Speed & records")

    def __post_init__(self) -> None:
        _require(math.isnan(self.ema) or self.ema == 0 or 0.5 <= self.ema < 1,  # nan: check
                 f"ema must be 0 (off) or a decay from 0.5 up to but not including 1, such as "
                 f"0.999; got {self.ema}")
        check(self)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything a run needs. ``studio train --config`` runs one headless."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    freeze: FreezeSpec = field(default_factory=FreezeSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
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


# The sections whose fields have settings (head: model.head), in the order the faces show them
SECTIONS: dict[str, type] = {"train": TrainConfig, "data": DataConfig, "head": HeadConfig,
                             "optim": OptimConfig, "lora": LoraSpec}


def all_described() -> list[Described]:
    """Every field with a setting, section by section: what the CLI and the Train page show."""
    return [item for section, cls in SECTIONS.items() for item in described(cls, section)]
