"""The objective and the optimizer: loss functions, optimizers, the learning-rate schedule, and
moving parameters between optimizer groups when a stage freezes or unfreezes layers.

Every group keeps its configured rate in ``studio_base_lr``; the schedule multiplies it by one
factor per optimizer step, so groups keep their ratios (discriminative rates) through warm-up
and decay.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from studio.engine.config import OptimConfig, TrainConfig


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
        probabilities = torch.softmax(logits, dim=1)
        if target.ndim == 2:  # class probabilities (MixUp/CutMix): the target mix's share
            p_true = (probabilities * target).sum(1)
        else:
            p_true = probabilities.gather(1, target[:, None]).squeeze(1)
        return ((1.0 - p_true) ** self.gamma * ce).mean()


class CrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy that takes labels or class probabilities (MixUp/CutMix) alike. With class
    weights, torch divides a batch of labels by the weights of its labels but a batch of
    probabilities by its size; here both divide by the targets' weights, so a one-hot target
    gives exactly the loss of its label."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim != 2 or self.weight is None:
            return super().forward(logits, target)
        per_sample = F.cross_entropy(logits, target, weight=self.weight, reduction="none",
                                     label_smoothing=self.label_smoothing)
        return per_sample.sum() / (target * self.weight).sum()


def make_criterion(train: TrainConfig, class_weights: torch.Tensor | None) -> nn.Module:
    if train.loss == "focal":
        return FocalLoss(weight=class_weights, label_smoothing=train.label_smoothing)
    return CrossEntropy(weight=class_weights, label_smoothing=train.label_smoothing)


def make_optimizer(optim: OptimConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    for group in groups:
        group.setdefault("studio_base_lr", group["lr"])
    if optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum,
                               nesterov=optim.nesterov and optim.momentum > 0)
    kind = torch.optim.Adam if optim.optimizer == "adam" else torch.optim.AdamW
    return kind(groups, lr=optim.lr)


def regroup(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    """Newly trainable parameters join their group; parameters already training keep their
    optimizer state; newly frozen ones leave (with their state)."""
    wanted = {g["name"]: g for g in groups}
    for group in optimizer.param_groups:
        new = wanted.pop(group["name"], None)
        for name, param in zip(group["param_names"], group["params"], strict=True):
            if new is None or name not in new["param_names"]:
                optimizer.state.pop(param, None)
        group["params"] = [] if new is None else new["params"]
        group["param_names"] = [] if new is None else new["param_names"]
        if new is not None:
            group["studio_base_lr"] = new.get("studio_base_lr", new["lr"])
            group["weight_decay"] = new["weight_decay"]
    for group in wanted.values():  # a group whose parameters were all frozen until now
        group.setdefault("studio_base_lr", group["lr"])
        optimizer.add_param_group(group)


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


def _cos_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))


class Schedule:
    """The learning rate of every group at each optimizer step of a run."""

    def __init__(self, optim: OptimConfig, opt_steps_per_epoch: int, epochs: int) -> None:
        self.optim = optim
        self.steps_per_epoch = opt_steps_per_epoch
        self.total = opt_steps_per_epoch * epochs
        self.warmup = round(optim.warmup_epochs * opt_steps_per_epoch)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        optim = self.optim
        factor = lr_factor(optim.schedule, step, self.total, self.warmup, self.steps_per_epoch,
                           optim.step_size, optim.gamma)
        for group in optimizer.param_groups:
            group["lr"] = group["studio_base_lr"] * factor


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Group name → learning rate now, for groups that hold trainable parameters."""
    return {g["name"]: float(g["lr"]) for g in optimizer.param_groups if g["params"]}


class StepObserver(Protocol):
    """Looks at some optimizer steps (the live learning view, :mod:`studio.engine.learning`)."""

    def wants(self) -> bool:
        """Whether to look at the step about to be taken (asked once per step: keep it cheap)."""
        ...

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The gradients are final (unscaled, not yet clipped); the weights are not changed."""
        ...

    def after_step(self, optimizer: torch.optim.Optimizer, global_step: int) -> None:
        """The weights have changed; the gradients are still there."""
        ...


class Stepper:
    """Backward and optimizer steps: the schedule's learning rates, gradient clipping, and the
    gradient scaler under fp16."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, clip: float,
                 fp16: bool) -> None:
        self.optimizer, self.schedule, self.clip = optimizer, schedule, clip
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.observer: StepObserver | None = None

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, trainable: list[torch.Tensor], global_step: int) -> None:
        optimizer = self.optimizer
        self.schedule.apply(optimizer, global_step)
        observer = self.observer if self.observer is not None and self.observer.wants() \
            else None
        if self.scaler is not None and (self.clip or observer is not None):
            self.scaler.unscale_(optimizer)  # scaler.step then does not unscale again
        if observer is not None:
            observer.before_step(optimizer)
        if self.clip:
            torch.nn.utils.clip_grad_norm_(trainable, self.clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if observer is not None:
            observer.after_step(optimizer, global_step + 1)
        optimizer.zero_grad(set_to_none=True)
