"""Everything a run trains with, built once from a RunConfig: :func:`build_parts`.

The trainer, the learning-rate finder and anything else that trains start from the same parts
(model with its head and freeze spec, parameter groups and optimizer, loss, datasets, samplers
and loaders), so a sweep and a run cannot drift apart. The parts know their placement: the
samplers give this process its share of the data, and the model is on this process's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from studio.engine.backbones import BuiltModel, build_model
from studio.engine.config import ConfigError, FreezeSpec, RunConfig
from studio.engine.data import DatasetScan, scan_folder
from studio.engine.errors import StudioError
from studio.engine.images import FolderDataset, build_transforms
from studio.engine.lora import LoraReport
from studio.engine.optim import make_criterion, make_optimizer, regroup
from studio.engine.params import (
    apply_freeze,
    assign_groups,
    frozen_norm_modules,
    optimizer_groups,
    resolve_frozen,
    set_frozen_norms_eval,
    stage_at,
)
from studio.engine.runtime import Placement, autocast_for, loader_workers, pick_precision

_NO_CHANNELS_LAST = ("vision_transformer", "swin_transformer")  # no convolutions to speed up


@dataclass
class Parts:
    config: RunConfig
    scan: DatasetScan
    placement: Placement
    precision: str
    built: BuiltModel
    model: nn.Module  # the plain model (never wrapped): checkpoints are its state
    names: list[str]
    channels_last: bool
    criterion: nn.Module
    train_sampler: Any
    val_sampler: Any
    loader_settings: dict[str, Any]
    generator: torch.Generator
    train_loader: DataLoader = field(init=False)
    val_loader: DataLoader = field(init=False)
    optimizer: torch.optim.Optimizer | None = None
    frozen: frozenset[str] = frozenset()
    bn_frozen: bool = True
    stage_index: int = -1
    loaders: list[DataLoader] = field(default_factory=list)
    lora: LoraReport | None = None  # the adapters, when config.lora has targets

    @property
    def device(self) -> torch.device:
        return self.placement.device

    def autocast(self) -> Any:
        return autocast_for(self.device, self.precision)

    # -- stages ---------------------------------------------------------------------------

    def stage_spec(self, epoch: int) -> tuple[int, FreezeSpec, dict[str, float]]:
        stage = stage_at(self.config.stages, epoch)
        if stage is None:
            return 0, self.config.freeze, {}
        return self.config.stages.index(stage) + 1, stage.freeze, stage.lr_scale

    def enter_stage(self, epoch: int) -> bool:
        """Apply the freeze spec and groups in force at ``epoch``; True when they changed."""
        index, spec, scale = self.stage_spec(epoch)
        if index == self.stage_index:
            return False
        cfg = self.config
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
            self.optimizer = make_optimizer(cfg.optim, groups)
        else:
            regroup(self.optimizer, groups)
        self.stage_index = index
        return True

    def train_mode(self, *modules: nn.Module) -> None:
        """Train mode, except BatchNorm layers whose parameters are frozen (they keep their
        statistics when the spec says so)."""
        for module in (self.model, *modules):
            module.train()
        if self.bn_frozen:
            set_frozen_norms_eval(self.model, self.frozen)

    def to_device(self, images: torch.Tensor, targets: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = (torch.channels_last if self.channels_last and images.dim() == 4
                  else torch.preserve_format)
        return (images.to(self.device, non_blocking=True, memory_format=layout),
                targets.to(self.device, non_blocking=True))

    def trainable(self) -> list[torch.Tensor]:
        assert self.optimizer is not None
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    # -- loaders --------------------------------------------------------------------------

    def make_loaders(self, train_set: Dataset, val_set: Dataset) -> tuple[DataLoader, DataLoader]:
        """Loaders over ``train_set``/``val_set`` with this process's samplers."""
        common = dict(self.loader_settings)
        if common["num_workers"] > 0:
            # Workers stay up between epochs and keep four batches each in flight, so a step
            # never waits for decoding (on ≤ 2 cores there are none: they would only compete).
            common |= {"persistent_workers": True, "prefetch_factor": 4}
        share = len(self.train_sampler)
        batch = max(1, min(self.config.train.batch_size, share))
        train = DataLoader(train_set, batch_size=batch, sampler=self.train_sampler,
                           generator=self.generator,
                           drop_last=share > batch and share % batch == 1,  # no batch of one
                           **common)
        val = DataLoader(val_set, batch_size=self.config.train.batch_size,
                         sampler=self.val_sampler, **common)
        self.loaders.extend([train, val])
        self.train_loader, self.val_loader = train, val
        return train, val

    def set_epoch(self, epoch: int) -> None:
        """Each epoch its own order, the same on every process and after a resume."""
        self.generator.manual_seed(self.config.train.seed * 1000 + epoch)
        self.train_sampler.set_epoch(epoch)

    def close(self) -> None:
        """Shut DataLoader workers down now, on every way out of a fit (stop, error, done)."""
        for loader in self.loaders:
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            loader._iterator = None
        self.loaders = []


def build_parts(config: RunConfig, scan: DatasetScan | None = None,
                placement: Placement | None = None, epoch: int = 1) -> Parts:
    """The model, freeze spec, groups and optimizer in force at ``epoch``, the loss, and the
    loaders of this process's share of ``scan`` (scanned from ``config.data.root`` if None)."""
    cfg = config
    placement = placement or Placement.single(cfg.train.device)
    device = placement.device
    precision = pick_precision(cfg.train.precision, device)
    if scan is None:
        if not cfg.data.root:
            raise ConfigError("no dataset folder is set (data.root); choose one with --data")
        scan = scan_folder(cfg.data.root, cfg.data.val_fraction, cfg.train.seed)
    built = build_model(cfg.model, len(scan.classes), cfg.data.image_size)
    model = built.model
    lora = None
    if cfg.lora.enabled:  # adapters before anything reads the parameter names
        from studio.engine.lora import attach

        lora = attach(model, cfg.lora, built.head, built.preprocessing.crop)
    if cfg.train.sync_bn and placement.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        built.model = model
    names = [n for n, _ in model.named_parameters()]
    channels_last = (cfg.train.channels_last and device.type != "mps"
                     and type(model).__module__.rsplit(".", 1)[-1] not in _NO_CHANNELS_LAST)
    model.to(device, memory_format=torch.channels_last if channels_last
             else torch.preserve_format)
    weights = scan.class_weights().to(device) if cfg.data.balance == "loss" else None
    train_samples, val_samples = scan.splits["train"], scan.splits["val"]
    parts = Parts(
        config=cfg, scan=scan, placement=placement, precision=precision, built=built,
        model=model, names=names, channels_last=channels_last,
        criterion=make_criterion(cfg.train, weights).to(device),
        train_sampler=placement.wrap_sampler(
            len(train_samples), shuffle=True, seed=cfg.train.seed,
            weights=(torch.tensor(scan.sample_weights()) if cfg.data.balance == "sampler"
                     else None)),
        val_sampler=placement.wrap_sampler(len(val_samples), shuffle=False),
        loader_settings={"pin_memory": device.type == "cuda",
                         **loader_workers(cfg.train.workers)},
        generator=torch.Generator().manual_seed(cfg.train.seed), lora=lora)
    check_plan(parts)
    prep = built.preprocessing
    parts.make_loaders(FolderDataset(train_samples, build_transforms(prep, cfg.data.augment,
                                                                     train=True)),
                       FolderDataset(val_samples, build_transforms(prep)))
    parts.enter_stage(epoch)
    return parts


def check_plan(parts: Parts) -> None:
    """Fail on a bad pattern now, not at the epoch where a stage starts."""
    cfg, names = parts.config, parts.names
    for epoch, spec in [(1, cfg.freeze), *((s.epoch, s.freeze) for s in cfg.stages)]:
        if resolve_frozen(names, spec, parts.built.head) == frozenset(names):
            raise StudioError(f"every parameter is frozen at epoch {epoch}, so there is "
                              f"nothing to train; unfreeze at least the head")
    empty = assign_groups(names, cfg.optim.groups).empty
    if empty:
        group = next(g for g in cfg.optim.groups if g.name == empty[0])
        raise ConfigError(f"learning-rate group {group.name!r} (patterns "
                          f"{', '.join(group.patterns)}) matches no parameter of "
                          f"{parts.built.backbone}; parameter names look like "
                          f"{names[len(names) // 2]}")


def unused_trainable(module: nn.Module, sample: torch.Tensor) -> list[str]:
    """Trainable parameters of ``module`` that get no gradient from a forward pass of
    ``sample`` (an unused branch): DistributedDataParallel must then look for them every step
    (``find_unused_parameters``), which costs time, so it is asked for only when needed. The
    module's buffers and the RNG are put back; gradients are not touched."""
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not params:
        return []
    buffers = {n: b.detach().clone() for n, b in module.named_buffers()}
    rng = torch.get_rng_state()
    try:
        out = module(sample)
        if not isinstance(out, torch.Tensor):
            out = out[0]
        grads = torch.autograd.grad(out.float().sum(), [p for _, p in params],
                                    allow_unused=True)
    finally:
        torch.set_rng_state(rng)
        with torch.no_grad():
            for name, buffer in module.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
    return [n for (n, _), g in zip(params, grads, strict=True) if g is None]


def shared_state(parts: Parts) -> dict[str, torch.Tensor]:
    """What every process of a run must hold bit for bit: all parameters, and the statistics
    of frozen BatchNorm layers. (Training BatchNorm layers gather statistics from their own
    process's batches unless SyncBatchNorm is on; the checkpoint keeps rank 0's.)"""
    state = dict(parts.model.named_parameters())
    if parts.bn_frozen:
        modules = dict(parts.model.named_modules())
        for name in frozen_norm_modules(parts.model, parts.frozen):
            for buffer, value in modules[name].named_buffers(prefix=name):
                state[buffer] = value
    return state
