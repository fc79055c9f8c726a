"""The training loop. Pure torch: it emits events to callbacks and knows nothing of Qt or a CLI.

``Trainer(config, run_dir, callbacks).fit(stop, pause)`` runs a RunConfig into a run directory:

    config.toml  labels.json  metrics.jsonl  checkpoints/last.pt  checkpoints/best.pt

and returns the :class:`FitEnded` event. Errors a user can cause end the fit with
``Outcome.FAILED`` and one sentence; they are never raised out of ``fit``.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from studio.engine.backbones import BuiltModel, build_model
from studio.engine.checkpoint import (
    capture_rng,
    load_checkpoint,
    optimizer_state_by_name,
    restore_optimizer_state,
    restore_rng,
    save_checkpoint,
)
from studio.engine.config import (
    FILE_MODE,
    ConfigError,
    OptimConfig,
    RunConfig,
    TrainConfig,
    atomic_write_text,
)
from studio.engine.data import (
    DatasetScan,
    DecodedDataset,
    FolderDataset,
    Sample,
    build_transforms,
    decode_images,
    decoded_size_estimate,
    image_cache_budget,
    scan_folder,
    transform_parts,
)
from studio.engine.errors import StudioError
from studio.engine.events import (
    BatchEnded,
    CacheReport,
    Callback,
    CheckpointSaved,
    EpochEnded,
    FitEnded,
    FitStarted,
    Outcome,
    StageStarted,
    WarningIssued,
)
from studio.engine.features import (
    MIN_PREFIX_SHARE,
    CachedBatches,
    CacheStopped,
    ModelSplit,
    SplitRefused,
    cache_key,
    load_or_build,
    prefix_share,
    split_model,
    trim_memory,
)
from studio.engine.params import (
    apply_freeze,
    assign_groups,
    count_params,
    optimizer_groups,
    resolve_frozen,
    set_frozen_norms_eval,
    stage_at,
)

log = logging.getLogger(__name__)

EMIT_INTERVAL = 0.05  # seconds between BatchEnded events: at most ~20 a second
_NO_CHANNELS_LAST = ("vision_transformer", "swin_transformer")  # no convolutions to speed up


class RunPaths:
    """Where a run directory keeps its files."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.root = Path(run_dir)
        self.config = self.root / "config.toml"
        self.labels = self.root / "labels.json"
        self.metrics = self.root / "metrics.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"

    def holds_a_run(self) -> bool:
        """True once an epoch has been saved; a run that never finished one can be redone."""
        return self.last.exists()


class NonFiniteLoss(StudioError):
    pass


# ---------------------------------------------------------------------------------------------
# Device, precision, loss, schedule


def pick_device(spec: str) -> torch.device:
    """``auto`` → CUDA, then Apple MPS, then CPU; an explicit device must exist."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; "
                          "use device 'auto' or 'cpu'")
    if spec == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' was asked for but Apple MPS is not available; "
                          "use device 'auto' or 'cpu'")
    return torch.device(spec)


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def pick_precision(spec: str, device: torch.device) -> str:
    if spec == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and cpu_supports_bf16():
            return "bf16"
        return "fp32"
    if spec == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on this device")
    return spec


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017): down-weights easy examples by (1 - p_true)^gamma."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        ce = F.cross_entropy(logits, target, weight=self.weight, reduction="none",
                             label_smoothing=self.label_smoothing)
        p_true = torch.softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        return ((1.0 - p_true) ** self.gamma * ce).mean()


def make_criterion(train: TrainConfig, class_weights: torch.Tensor | None) -> nn.Module:
    if train.loss == "focal":
        return FocalLoss(weight=class_weights, label_smoothing=train.label_smoothing)
    return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=train.label_smoothing)


def lr_factor(schedule: str, step: int, total: int, warmup: int, steps_per_epoch: int,
              step_size: int = 10, gamma: float = 0.1) -> float:
    """Multiplier of every group's learning rate at optimizer step ``step`` (0-based)."""
    if schedule == "onecycle":  # torch's OneCycleLR defaults: 30 % up from 1/25, cosine down
        last = max(1, total - 1)
        peak = max(1, int(0.3 * last))
        if step < peak:
            return _cos_between(1 / 25, 1.0, step / peak)
        return _cos_between(1.0, 1 / 25 / 1e4, (step - peak) / max(1, last - peak))
    if warmup > 0 and step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return gamma ** ((step // max(1, steps_per_epoch)) // step_size)
    return 1.0


def make_optimizer(optim: OptimConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum,
                               nesterov=optim.nesterov and optim.momentum > 0)
    kind = torch.optim.Adam if optim.optimizer == "adam" else torch.optim.AdamW
    return kind(groups, lr=optim.lr)


def _cos_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Set both ways: in a long-lived GUI process one run must not inherit the previous one's.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def auto_workers() -> int:
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def loader_workers(workers: int = -1) -> dict[str, Any]:
    """DataLoader worker settings for a one-off loader (evaluation, LR sweep, caches):
    ``workers`` (-1: from the machine) started with forkserver/spawn, never fork."""
    count = auto_workers() if workers < 0 else workers
    if count == 0:
        return {"num_workers": 0}
    return {"num_workers": count, "multiprocessing_context": _loader_context()}


def autocast_for(device: torch.device, precision: str) -> Any:
    """The autocast context of a precision: off for fp32, bf16 or fp16 otherwise."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _loader_context() -> str:
    """Never fork: a forked worker of a multithreaded (GUI) process can deadlock."""
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


def _nan_to_none(value: float) -> float | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


# ---------------------------------------------------------------------------------------------
# The trainer


@dataclass
class _State:
    epoch: int = 0  # last completed epoch
    global_step: int = 0  # optimizer steps taken
    best_epoch: int | None = None
    best_metric: float | None = None
    bad_epochs: int = 0
    stage_index: int = -1


class Trainer:
    """Runs one RunConfig into one run directory. Create it, then call :meth:`fit` once."""

    def __init__(self, config: RunConfig, run_dir: str | os.PathLike[str],
                 callbacks: Iterable[Callback] = (), *, resume: bool = False,
                 scan: DatasetScan | None = None) -> None:
        self.config = config
        self.paths = RunPaths(run_dir)
        self.callbacks = [RunRecorder(self.paths), *callbacks]
        self.resume = resume
        self.scan = scan
        self.state = _State()
        self._started = time.monotonic()
        self._loaders: list[DataLoader] = []

    @classmethod
    def resume_run(cls, run_dir: str | os.PathLike[str], epochs: int | None = None,
                   callbacks: Iterable[Callback] = ()) -> Trainer:
        """A trainer that continues ``run_dir`` from its last completed epoch."""
        paths = RunPaths(run_dir)
        if not paths.config.is_file():
            raise StudioError(f"{paths.root} is not a run folder (it has no config.toml); "
                              f"resume the folder that `studio train --out` wrote")
        config = RunConfig.load(paths.config)
        if epochs is not None:
            config = config.replace(train=_replace(config.train, epochs=epochs))
        return cls(config, run_dir, callbacks, resume=True)

    # -- public ---------------------------------------------------------------------------

    def fit(self, stop: threading.Event | None = None,
            pause: threading.Event | None = None) -> FitEnded:
        """Train until done, stopped (``stop`` set: answers within one batch), or failed.
        While ``pause`` is set the loop waits between batches."""
        stop = stop or threading.Event()
        self._started = time.monotonic()
        try:
            self._setup()
            return self._loop(stop, pause)
        except NonFiniteLoss as error:
            return self._end(Outcome.FAILED, str(error))
        except StudioError as error:
            return self._end(Outcome.FAILED, str(error))
        except Exception as error:  # a bug, not a user error: keep the run folder, log it
            log.exception("training failed")
            return self._end(Outcome.FAILED, f"training failed unexpectedly ({type(error).__name__}"
                                             f": {error}); the details are in the log")
        finally:
            self._close_loaders()
            trim_memory()

    # -- setup ----------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.config
        if not self.resume and self.paths.holds_a_run():
            raise StudioError(f"{self.paths.root} already holds a run; resume it with "
                              f"--resume {self.paths.root} or choose another --out folder")
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        self.device = pick_device(cfg.train.device)
        self.precision = pick_precision(cfg.train.precision, self.device)
        if not cfg.data.root:
            raise ConfigError("no dataset folder is set (data.root); choose one with --data")
        scan = self.scan or scan_folder(cfg.data.root, cfg.data.val_fraction, cfg.train.seed)
        self.scan = scan
        self.classes = scan.classes
        if self.resume:
            self._check_labels()
            if RunConfig.load(self.paths.config) != cfg:  # e.g. --epochs extended the run
                cfg.save(self.paths.config)
        self.built: BuiltModel = build_model(cfg.model, len(self.classes), cfg.data.image_size)
        self.model = self.built.model
        self.names = [n for n, _ in self.model.named_parameters()]
        self.channels_last = (cfg.train.channels_last and self.device.type != "mps"
                              and _family(self.model) not in _NO_CHANNELS_LAST)
        self.model.to(self.device, memory_format=torch.channels_last if self.channels_last
                      else torch.preserve_format)
        weights = scan.class_weights().to(self.device) if cfg.data.balance == "loss" else None
        self.criterion = make_criterion(cfg.train, weights).to(self.device)
        self.train_loader, self.val_loader = self._make_loaders(scan)
        self.train_batches: Any = self.train_loader  # or cached features (features.py)
        self.val_batches: Any = self.val_loader
        self._compiled: nn.Module | None = None
        self.forward: nn.Module = self._compile(self.model)  # or a split model's suffix
        self._cache_pending = False
        self._image_loaders: tuple[DataLoader, DataLoader] | None = None
        self.steps_per_epoch = len(self.train_loader)
        self.opt_steps_per_epoch = math.ceil(self.steps_per_epoch / cfg.train.accumulate)
        self.total_opt_steps = self.opt_steps_per_epoch * cfg.train.epochs
        self.warmup_steps = round(cfg.optim.warmup_epochs * self.opt_steps_per_epoch)
        self.scaler = (torch.amp.GradScaler("cuda") if self.precision == "fp16" else None)
        self.optimizer: torch.optim.Optimizer | None = None
        self.frozen: frozenset[str] = frozenset()
        self._check_plan()

        checkpoint = load_checkpoint(self.paths.last) if self.resume else None
        start = 1 if checkpoint is None else int(checkpoint["epoch"]) + 1
        if start > cfg.train.epochs:
            raise StudioError(f"the run in {self.paths.root} already completed "
                              f"{_plural(start - 1, 'epoch')}; pass --epochs with a larger "
                              f"number to train further")
        self._enter_stage(start, announce=False)
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            self.paths.root.mkdir(parents=True, exist_ok=True)
            self.paths.metrics.unlink(missing_ok=True)  # left by an attempt with no epoch
            resolved = cfg.replace(data=_replace(cfg.data, root=str(Path(scan.root).resolve())))
            resolved.save(self.paths.config)
            atomic_write_text(self.paths.labels, json.dumps(list(self.classes), indent=2,
                                                            ensure_ascii=False) + "\n")
        self.start_epoch = start
        counts = count_params(self.model, self.frozen)
        self._emit("on_fit_start", FitStarted(
            run_dir=str(self.paths.root), epochs=cfg.train.epochs, start_epoch=start,
            steps_per_epoch=self.steps_per_epoch, train_images=len(scan.splits["train"]),
            val_images=len(scan.splits["val"]), classes=tuple(self.classes),
            device=device_label(self.device), precision=self.precision,
            channels_last=self.channels_last, trainable_params=counts.trainable,
            total_params=counts.total))
        for message in [*scan.warnings, *self.built.notes]:
            self._emit("on_warning", WarningIssued(message))
        self._announce_stage(start)

    def _check_plan(self) -> None:
        """Fail on a bad pattern now, not at the epoch where a stage starts."""
        cfg = self.config
        for epoch, spec in [(1, cfg.freeze), *((s.epoch, s.freeze) for s in cfg.stages)]:
            if resolve_frozen(self.names, spec, self.built.head) == frozenset(self.names):
                raise StudioError(f"every parameter is frozen at epoch {epoch}, so there is "
                                  f"nothing to train; unfreeze at least the head")
        empty = assign_groups(self.names, cfg.optim.groups).empty
        if empty:
            group = next(g for g in cfg.optim.groups if g.name == empty[0])
            raise ConfigError(f"learning-rate group {group.name!r} (patterns "
                              f"{', '.join(group.patterns)}) matches no parameter of "
                              f"{self.built.backbone}; parameter names look like "
                              f"{self.names[len(self.names) // 2]}")

    def _check_labels(self) -> None:
        try:
            saved = json.loads(self.paths.labels.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise StudioError(f"{self.paths.labels} is missing or damaged ({error})") from error
        if list(saved) != list(self.classes):
            raise StudioError(f"the dataset's classes {list(self.classes)} differ from the run's "
                              f"{saved}; resume with the same dataset")

    def _make_loaders(self, scan: DatasetScan) -> tuple[DataLoader, DataLoader]:
        cfg = self.config
        prep = self.built.preprocessing
        train_set = FolderDataset(scan.splits["train"],
                                  build_transforms(prep, cfg.data.augment, train=True))
        val_set = FolderDataset(scan.splits["val"], build_transforms(prep))
        return self._loaders_for(train_set, val_set)

    def _loaders_for(self, train_set: Dataset, val_set: Dataset
                     ) -> tuple[DataLoader, DataLoader]:
        cfg = self.config
        scan = self.scan
        assert scan is not None
        if not hasattr(self, "generator"):  # one generator, reseeded every epoch
            self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self._loader_common = {"pin_memory": self.device.type == "cuda",
                               **loader_workers(cfg.train.workers)}
        common = dict(self._loader_common)
        if common["num_workers"] > 0:
            # Workers stay up between epochs and keep four batches each in flight, so a step
            # never waits for decoding (on ≤ 2 cores there are none: they would only compete).
            common |= {"persistent_workers": True, "prefetch_factor": 4}
        sampler = (scan.weighted_sampler(self.generator) if cfg.data.balance == "sampler"
                   else None)
        batch = min(cfg.train.batch_size, len(train_set))  # type: ignore[arg-type]
        train = DataLoader(train_set, batch_size=batch, shuffle=sampler is None,
                           sampler=sampler, generator=self.generator,
                           drop_last=len(train_set) > batch  # type: ignore[arg-type]
                           and len(train_set) % batch == 1,  # type: ignore[arg-type]
                           **common)
        val = DataLoader(val_set, batch_size=cfg.train.batch_size, shuffle=False, **common)
        self._loaders.extend([train, val])
        return train, val

    def _close_loaders(self) -> None:
        """Shut DataLoader workers down now, on every way out of fit (stop, error, done)."""
        for loader in self._loaders:
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            loader._iterator = None
        self._loaders = []

    # -- stages and the optimizer ---------------------------------------------------------

    def _enter_stage(self, epoch: int, announce: bool = True) -> None:
        cfg = self.config
        stage = stage_at(cfg.stages, epoch)
        index = 0 if stage is None else cfg.stages.index(stage) + 1
        if index == self.state.stage_index:
            return
        spec = cfg.freeze if stage is None else stage.freeze
        scale = {} if stage is None else stage.lr_scale
        self.frozen = resolve_frozen(self.names, spec, self.built.head)
        self.bn_frozen = spec.bn_frozen
        apply_freeze(self.model, self.frozen)
        groups = optimizer_groups(self.model, self.frozen, cfg.optim.groups, cfg.optim.lr,
                                  cfg.optim.weight_decay, scale)
        if not groups:
            raise StudioError(f"every parameter is frozen at epoch {epoch}, so there is nothing "
                              f"to train; unfreeze at least the head")
        for group in groups:
            group["studio_base_lr"] = group["lr"]
        if self.optimizer is None:
            self.optimizer = self._make_optimizer(groups)
        else:
            self._regroup(groups)
        self.state.stage_index = index
        self._cache_pending = True
        if announce:
            self._announce_stage(epoch)

    def _announce_stage(self, epoch: int) -> None:
        counts = count_params(self.model, self.frozen)
        assert self.optimizer is not None
        names = tuple(g["name"] for g in self.optimizer.param_groups if g["params"])
        self._emit("on_stage_start", StageStarted(epoch, self.state.stage_index,
                                                  counts.trainable, counts.total, names))

    def _make_optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        return make_optimizer(self.config.optim, groups)

    def _regroup(self, groups: list[dict[str, Any]]) -> None:
        """Newly trainable parameters join their group; parameters already training keep
        their optimizer state; newly frozen ones leave (with their state)."""
        assert self.optimizer is not None
        wanted = {g["name"]: g for g in groups}
        for group in self.optimizer.param_groups:
            new = wanted.pop(group["name"], None)
            for name, param in zip(group["param_names"], group["params"], strict=True):
                if new is None or name not in new["param_names"]:
                    self.optimizer.state.pop(param, None)
            group["params"] = [] if new is None else new["params"]
            group["param_names"] = [] if new is None else new["param_names"]
            if new is not None:
                group["studio_base_lr"] = new["studio_base_lr"]
                group["weight_decay"] = new["weight_decay"]
        for group in wanted.values():  # a group whose parameters were all frozen until now
            self.optimizer.add_param_group(group)

    def _set_lr(self) -> dict[str, float]:
        assert self.optimizer is not None
        optim = self.config.optim
        factor = lr_factor(optim.schedule, self.state.global_step, self.total_opt_steps,
                           self.warmup_steps, self.opt_steps_per_epoch, optim.step_size,
                           optim.gamma)
        lrs = {}
        for group in self.optimizer.param_groups:
            group["lr"] = group["studio_base_lr"] * factor
            if group["params"]:
                lrs[group["name"]] = group["lr"]
        return lrs

    def _current_lrs(self) -> dict[str, float]:
        assert self.optimizer is not None
        return {g["name"]: float(g["lr"]) for g in self.optimizer.param_groups if g["params"]}

    # -- the feature cache ----------------------------------------------------------------

    def _use_images(self) -> None:
        self.train_batches, self.val_batches = self.train_loader, self.val_loader
        self.forward = self._compile(self.model)

    def _compile(self, module: nn.Module) -> nn.Module:
        """``torch.compile`` when asked (train.compile); the whole model is compiled once."""
        if not self.config.train.compile:
            return module
        if module is self.model:
            if self._compiled is None:
                self._compiled = torch.compile(module)  # type: ignore[assignment]
            return self._compiled
        return torch.compile(module)  # type: ignore[return-value]

    def _stage_epochs(self, epoch: int) -> int:
        """Epochs from ``epoch`` to the end of its stage."""
        later = [s.epoch for s in self.config.stages if s.epoch > epoch]
        return min([*later, self.config.train.epochs + 1]) - epoch

    def _plan_feature_cache(self, epoch: int) -> tuple[ModelSplit, float] | str:
        """Where to cut the model for this stage and the prefix's share of the FLOPs, or why
        the frozen prefix cannot (or should not) be cached."""
        cfg = self.config
        if cfg.train.feature_cache == "off":
            return "switched off"
        if self._stage_epochs(epoch) < 2:
            return "a single epoch sees each image once, so caching would not pay"
        if cfg.data.augment != "none" and cfg.train.cache_views == 0:
            return (f"images are augmented ({cfg.data.augment}); set cache_views to cache "
                    f"augmented views, or augment none")
        try:
            split = split_model(self.model, self.frozen, self.bn_frozen)
        except SplitRefused as reason:
            return str(reason)
        share = prefix_share(self.model, split, self.built.preprocessing.crop)
        if share < MIN_PREFIX_SHARE:
            return (f"the frozen layers before {split.boundary} are only {share:.0%} of the "
                    f"computation")
        return split, share

    def _prepare_caches(self, epoch: int, stop: threading.Event) -> bool:
        """Decide and build this stage's cache (features, else images); False when stopped
        while building."""
        cfg = self.config
        self._use_images()
        plan = self._plan_feature_cache(epoch)
        if isinstance(plan, str):
            self._emit("on_cache", CacheReport("features", "off", detail=plan))
            return self._prepare_image_cache(epoch, stop)
        split, share = plan
        augment = cfg.data.augment
        views = cfg.train.cache_views if augment != "none" else 1  # ≥ 1: planned so
        train_samples = list(self.scan.splits["train"])
        val_samples = list(self.scan.splits["val"])
        prep = self.built.preprocessing
        key_prep = prep.to_json()
        keys = (cache_key(split, train_samples, key_prep, self.precision, views, augment,
                          cfg.train.seed),
                cache_key(split, val_samples, key_prep, self.precision))
        images = len(train_samples) * views + len(val_samples)
        self._emit("on_cache", CacheReport("features", "building", images=images,
                                           detail=f"cut after {split.boundary}"))
        train_transform = build_transforms(prep, cfg.data.augment, train=True)
        eval_transform = build_transforms(prep)

        def batches(samples: list[Sample], transform: Any, seed: int) -> Callable[[int], Any]:
            def for_view(view: int) -> Any:
                torch.manual_seed(seed * 7919 + view)
                loader = DataLoader(FolderDataset(samples, transform),
                                    batch_size=max(cfg.train.batch_size, 64), shuffle=False,
                                    generator=torch.Generator().manual_seed(seed + view),
                                    **self._loader_common)
                return (images for images, _ in loader)
            return for_view

        started = time.monotonic()
        autocast = self._autocast()
        try:
            train_set, train_reused = load_or_build(
                keys[0], split.prefix, batches(train_samples, train_transform, cfg.train.seed),
                len(train_samples), views, [s.label for s in train_samples], self.device,
                autocast, self.channels_last, stop)
            if val_samples:
                val_set, val_reused = load_or_build(
                    keys[1], split.prefix, batches(val_samples, eval_transform, 0),
                    len(val_samples), 1, [s.label for s in val_samples], self.device,
                    autocast, self.channels_last, stop)
            else:
                val_set, val_reused = None, True
        except CacheStopped:
            return False
        seconds = time.monotonic() - started
        self.train_batches = CachedBatches(
            train_set, self.train_loader.sampler if cfg.data.balance == "sampler" else None,
            self.train_loader.batch_size or 1, self.train_loader.drop_last, self.generator,
            shuffle=cfg.data.balance != "sampler")
        if val_set is not None:
            self.val_batches = CachedBatches(val_set, None, cfg.train.batch_size, False)
        self.forward = self._compile(split.suffix)
        megabytes = (train_set.nbytes + (val_set.nbytes if val_set is not None else 0)) / 1e6
        where = [f"cut after {split.boundary}", f"{share:.0%} of the computation"]
        if augment != "none":
            where.append(f"{views} augmented view{'s' if views > 1 else ''} per image")
        if train_set.path is not None:
            where.append(f"on disk in {train_set.path.parent}")
        where.extend(split.notes)
        reused = train_reused and val_reused
        self._emit("on_cache", CacheReport("features", "reused" if reused else "ready",
                                           images=images, megabytes=megabytes, seconds=seconds,
                                           detail="; ".join(where)))
        return True

    def _prepare_image_cache(self, epoch: int, stop: threading.Event) -> bool:
        """Decode and resize every image once, keep uint8 tensors; False when stopped."""
        if self._image_loaders is not None:
            self.train_batches, self.val_batches = self._image_loaders
            return True
        cfg = self.config
        prep = self.built.preprocessing
        scan = self.scan
        assert scan is not None
        train_samples, val_samples = list(scan.splits["train"]), list(scan.splits["val"])
        cropped = cfg.data.augment == "none"
        need = (decoded_size_estimate(len(train_samples), prep, cropped)
                + decoded_size_estimate(len(val_samples), prep, True))
        budget = image_cache_budget()
        refusal = None
        if cfg.train.image_cache == "off":
            refusal = "switched off"
        elif cfg.train.epochs - epoch + 1 < 2:
            refusal = "a single epoch decodes each image once anyway"
        elif need > budget:
            refusal = (f"{len(train_samples) + len(val_samples)} images need about "
                       f"{need / 1e9:.1f} GB, more than the {budget / 1e9:.1f} GB set aside")
        if refusal is not None:
            self._image_loaders = (self.train_loader, self.val_loader)
            self._emit("on_cache", CacheReport("images", "off", detail=refusal))
            return True
        from torchvision.transforms import v2 as T

        count = len(train_samples) + len(val_samples)
        self._emit("on_cache", CacheReport("images", "building", images=count))
        started = time.monotonic()
        train_steps, train_tail = transform_parts(prep, cfg.data.augment, train=True)
        val_steps, val_tail = transform_parts(prep)
        train_images = decode_images(train_samples, train_steps, stop=stop)
        val_images = decode_images(val_samples, val_steps, stop=stop)
        if train_images is None or val_images is None:
            return False
        self.train_loader, self.val_loader = self._loaders_for(
            DecodedDataset(train_images, train_samples, T.Compose(train_tail)),
            DecodedDataset(val_images, val_samples, T.Compose(val_tail)))
        self._image_loaders = (self.train_loader, self.val_loader)
        self.train_batches, self.val_batches = self._image_loaders
        size = (train_images.nbytes + val_images.nbytes) / 1e6
        what = "resized" if not cropped else "resized and cropped"
        self._emit("on_cache", CacheReport("images", "ready", images=count, megabytes=size,
                                           seconds=time.monotonic() - started,
                                           detail=f"uint8, {what}"))
        return True

    # -- the loop -------------------------------------------------------------------------

    def _loop(self, stop: threading.Event, pause: threading.Event | None) -> FitEnded:
        cfg = self.config
        for epoch in range(self.start_epoch, cfg.train.epochs + 1):
            self._enter_stage(epoch)
            if self._cache_pending:
                self._cache_pending = False
                if not self._prepare_caches(epoch, stop):
                    return self._cancelled(epoch)
            began = time.monotonic()
            trained = self._train_epoch(epoch, stop, pause)
            if trained is None:
                return self._cancelled(epoch)
            train_loss, train_acc, images, busy = trained
            validated = self._validate(stop)
            if validated is None:
                return self._cancelled(epoch)
            val_loss, val_acc = validated
            is_best = self._track_best(epoch, val_loss, val_acc)
            self.state.epoch = epoch
            self._emit("on_epoch_end", EpochEnded(
                epoch=epoch, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss,
                val_acc=val_acc, lr=self._current_lrs(), seconds=time.monotonic() - began,
                images_per_second=images / busy if busy > 0 else 0.0, is_best=is_best))
            self._save(epoch, is_best)
            patience = cfg.train.early_stopping
            if patience and self.state.bad_epochs >= patience:
                return self._end(Outcome.EARLY_STOPPED,
                                 f"stopped early after epoch {epoch}: {cfg.train.monitor} did not "
                                 f"improve for {_plural(patience, 'epoch')}")
        return self._end(Outcome.COMPLETED, f"completed {_plural(cfg.train.epochs, 'epoch')}")

    def _cancelled(self, epoch: int) -> FitEnded:
        done = self.state.epoch
        if done:
            resume = f"the run resumes from epoch {done + 1} with --resume {self.paths.root}"
        else:
            resume = "no epoch had finished, so there is nothing to resume"
        return self._end(Outcome.CANCELLED, f"stopped during epoch {epoch}; {resume}")

    def _wait_while_paused(self, stop: threading.Event, pause: threading.Event | None) -> float:
        if pause is None or not pause.is_set():
            return 0.0
        began = time.monotonic()
        while pause.is_set() and not stop.is_set():
            stop.wait(0.05)
        return time.monotonic() - began

    def _train_epoch(self, epoch: int, stop: threading.Event, pause: threading.Event | None
                     ) -> tuple[float, float, int, float] | None:
        cfg = self.config
        model, optimizer = self.model, self.optimizer
        assert optimizer is not None
        model.train()
        self.forward.train()
        if self.bn_frozen:
            set_frozen_norms_eval(model, self.frozen)
        self.generator.manual_seed(cfg.train.seed * 1000 + epoch)  # same order on resume
        if isinstance(self.train_batches, CachedBatches):
            self.train_batches.set_epoch(cfg.train.seed * 1000 + epoch)
        steps, accumulate = self.steps_per_epoch, cfg.train.accumulate
        autocast = self._autocast()
        trainable = [p for g in optimizer.param_groups for p in g["params"]]
        loss_sum = torch.zeros((), device=self.device)
        epoch_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        window, seen, window_start = 0, 0, 1
        began = last_emit = time.monotonic()
        paused = 0.0
        optimizer.zero_grad(set_to_none=True)
        forward = self.forward
        for step, (images, targets) in enumerate(self.train_batches, start=1):
            paused += self._wait_while_paused(stop, pause)
            if stop.is_set():
                return None
            images, targets = self._to_device(images, targets)
            with autocast:
                logits = forward(images)
                loss = self.criterion(logits, targets)
            scaled = loss / accumulate
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
            if step % accumulate == 0 or step == steps:
                self._optimizer_step(trainable)
            batch = targets.shape[0]
            loss_sum += loss.detach().float() * batch
            epoch_loss += loss.detach().float() * batch
            correct += (logits.detach().argmax(1) == targets).sum()
            window += batch
            seen += batch
            now = time.monotonic()
            if now - last_emit >= EMIT_INTERVAL or step == steps:
                mean = (loss_sum / window).item()  # the one sync per logging step
                if not math.isfinite(mean):
                    where = f"step {step}" if window_start == step else \
                        f"steps {window_start}–{step}"
                    raise NonFiniteLoss(
                        f"the loss became {mean} in epoch {epoch} at {where}; training stopped "
                        f"and the last good checkpoint is kept — lower the learning rate or "
                        f"turn on gradient clipping")
                busy = max(1e-9, now - began - paused)
                pace = busy / step
                remaining = (steps - step) + (cfg.train.epochs - epoch) * steps
                self._emit("on_batch_end", BatchEnded(
                    epoch=epoch, step=step, steps=steps, global_step=self.state.global_step,
                    loss=mean, accuracy=correct.item() / seen, lr=self._current_lrs(),
                    images_per_second=seen / busy, eta_seconds=remaining * pace))
                loss_sum.zero_()
                window, window_start, last_emit = 0, step + 1, now
        busy = time.monotonic() - began - paused
        return (epoch_loss / max(1, seen)).item(), correct.item() / max(1, seen), seen, busy

    def _to_device(self, images: torch.Tensor, targets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = (torch.channels_last if self.channels_last and images.dim() == 4
                  else torch.preserve_format)
        return (images.to(self.device, non_blocking=True, memory_format=layout),
                targets.to(self.device, non_blocking=True))

    def _optimizer_step(self, trainable: Sequence[torch.Tensor]) -> None:
        optimizer = self.optimizer
        assert optimizer is not None
        self._set_lr()
        clip = self.config.train.grad_clip
        if self.scaler is not None:
            if clip:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, clip)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            if clip:
                torch.nn.utils.clip_grad_norm_(trainable, clip)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1

    def _autocast(self) -> Any:
        return autocast_for(self.device, self.precision)

    @torch.no_grad()
    def _validate(self, stop: threading.Event) -> tuple[float, float] | None:
        if len(self.val_loader.dataset) == 0:  # type: ignore[arg-type]
            return float("nan"), float("nan")
        self.model.eval()
        self.forward.eval()
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        with self._autocast():
            for images, targets in self.val_batches:
                if stop.is_set():
                    return None
                images, targets = self._to_device(images, targets)
                logits = self.forward(images).float()
                total_loss += F.cross_entropy(logits, targets, reduction="sum")
                correct += (logits.argmax(1) == targets).sum()
                seen += targets.shape[0]
        return total_loss.item() / seen, correct.item() / seen

    def _track_best(self, epoch: int, val_loss: float, val_acc: float) -> bool:
        monitor = self.config.train.monitor
        value = val_acc if monitor == "val_acc" else val_loss
        if len(self.val_loader.dataset) == 0:  # type: ignore[arg-type]
            self.state.best_epoch, self.state.best_metric = epoch, None  # latest is best
            return True
        best = self.state.best_metric
        better = math.isfinite(value) and (
            best is None or (value > best if monitor == "val_acc" else value < best))
        if not math.isfinite(value):
            self._emit("on_warning", WarningIssued(
                f"the validation {monitor} of epoch {epoch} is {value}; it does not count as "
                f"the best epoch"))
        if better:
            self.state.best_epoch, self.state.best_metric, self.state.bad_epochs = epoch, value, 0
        else:
            self.state.bad_epochs += 1
        return better

    # -- checkpoints ----------------------------------------------------------------------

    def _save(self, epoch: int, is_best: bool) -> None:
        assert self.optimizer is not None
        payload = {
            "model": self.model.state_dict(),
            "optimizer": optimizer_state_by_name(self.optimizer),
            "scheduler": {"schedule": self.config.optim.schedule,
                          "global_step": self.state.global_step},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch,
            "global_step": self.state.global_step,
            "rng": capture_rng(),
            "frozen": sorted(self.frozen),
            "groups": [{"name": g["name"], "param_names": list(g["param_names"]),
                        "lr": g["studio_base_lr"], "weight_decay": g["weight_decay"]}
                       for g in self.optimizer.param_groups],
            "best": {"epoch": self.state.best_epoch, "metric": self.state.best_metric,
                     "bad_epochs": self.state.bad_epochs},
            "labels": list(self.classes),
            "backbone": self.built.backbone,
            "head": self.built.head,
            "preprocessing": self.built.preprocessing.to_json(),
            "config": self.config.to_toml(),
        }
        save_checkpoint(self.paths.last, payload)
        self._emit("on_checkpoint", CheckpointSaved(epoch, "last", str(self.paths.last)))
        if is_best:
            _atomic_copy(self.paths.last, self.paths.best)
            self._emit("on_checkpoint", CheckpointSaved(epoch, "best", str(self.paths.best)))

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("backbone") != self.built.backbone:
            raise StudioError(f"{self.paths.last} belongs to backbone "
                              f"{checkpoint.get('backbone')!r}, not {self.built.backbone!r}")
        try:
            self.model.load_state_dict(checkpoint["model"])
        except RuntimeError as error:
            raise StudioError(f"{self.paths.last} does not fit this model "
                              f"({str(error).splitlines()[0]})") from error
        assert self.optimizer is not None
        restore_optimizer_state(self.optimizer, checkpoint["optimizer"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        best = checkpoint.get("best", {})
        self.state.epoch = int(checkpoint["epoch"])
        self.state.global_step = int(checkpoint["global_step"])
        self.state.best_epoch = best.get("epoch")
        self.state.best_metric = best.get("metric")
        self.state.bad_epochs = int(best.get("bad_epochs", 0))
        restore_rng(checkpoint["rng"])

    # -- events ---------------------------------------------------------------------------

    def _emit(self, hook: str, event: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(event)

    def _end(self, outcome: Outcome, message: str) -> FitEnded:
        event = FitEnded(outcome=outcome, message=message, epochs_completed=self.state.epoch,
                         best_epoch=self.state.best_epoch, best_metric=self.state.best_metric,
                         monitor=self.config.train.monitor, run_dir=str(self.paths.root),
                         seconds=time.monotonic() - self._started)
        self._emit("on_fit_end", event)
        return event


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _replace(value: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(value, **changes)


def _family(model: nn.Module) -> str:
    return type(model).__module__.rsplit(".", 1)[-1]


def _atomic_copy(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunRecorder(Callback):
    """Appends the run's story to ``metrics.jsonl``, one JSON object a line."""

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths

    def _write(self, record: dict[str, Any]) -> None:
        if not self.paths.root.is_dir():
            return  # the fit failed before the run folder existed
        with open(self.paths.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def on_fit_start(self, event: FitStarted) -> None:
        self._write({"event": "fit_start", "start_epoch": event.start_epoch,
                     "epochs": event.epochs, "device": event.device,
                     "precision": event.precision, "trainable_params": event.trainable_params,
                     "total_params": event.total_params, "time": time.time()})

    def on_stage_start(self, event: StageStarted) -> None:
        self._write({"event": "stage", "epoch": event.epoch, "stage": event.index,
                     "trainable_params": event.trainable_params, "groups": list(event.groups)})

    def on_epoch_end(self, event: EpochEnded) -> None:
        self._write({k: _nan_to_none(v) for k, v in event.to_json().items()})

    def on_cache(self, event: CacheReport) -> None:
        if event.state != "building":
            self._write({"event": "cache", "kind": event.kind, "state": event.state,
                         "images": event.images, "megabytes": round(event.megabytes, 3),
                         "seconds": round(event.seconds, 3), "detail": event.detail})

    def on_fit_end(self, event: FitEnded) -> None:
        self._write({"event": "fit_end", "outcome": event.outcome.value,
                     "message": event.message, "epochs_completed": event.epochs_completed,
                     "best_epoch": event.best_epoch, "best_metric": event.best_metric,
                     "seconds": event.seconds, "time": time.time()})
