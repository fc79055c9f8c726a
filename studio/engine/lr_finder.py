"""Learning-rate finder (Smith 2015, as popularised by fastai): an exponential sweep of the
learning rate over a few hundred training steps, the loss recorded at each, and a suggestion.

The sweep trains the run's own model with its freeze spec and parameter groups: every group's
learning rate is scaled by the same factor, so the curve is plotted against the *base* learning
rate (``optim.lr``) and a suggestion applies to the groups by scaling them all alike, keeping
discriminative ratios. The model and optimizer are restored afterwards, bit for bit.

The suggestion is the learning rate where the smoothed loss falls fastest (against log lr)
before its minimum — Smith's and fastai v1's rule. fastai's later "valley" (the middle of the
longest decreasing run) was tried first: on short sweeps whose loss is flat for a long while it
lands at the start of the descent, an order of magnitude too low.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from studio.engine.errors import StudioError

START_LR, END_LR = 1e-7, 10.0
STEPS = 200
SMOOTHING = (0.8, 0.98)  # bounds of the loss's moving-average factor (debiased)
DIVERGE = 4.0  # stop once the smoothed loss is this many times its minimum

Progress = Callable[[int, int, float, float], None]  # (step, steps, lr, smoothed loss)


@dataclass(frozen=True, slots=True)
class LRFinderResult:
    lrs: tuple[float, ...]  # base learning rate at each step
    losses: tuple[float, ...]  # the raw training loss at each step
    smoothed: tuple[float, ...]
    suggestion: float | None  # None when the curve is too short to judge
    ended: str  # why the sweep ended: "finished", "diverged", "stopped"
    base_lr: float  # the config's base learning rate when the sweep ran

    def to_json(self) -> dict[str, Any]:
        return {"lrs": list(self.lrs), "losses": list(self.losses),
                "smoothed": list(self.smoothed), "suggestion": self.suggestion,
                "ended": self.ended, "base_lr": self.base_lr}


def suggest_lr(lrs: Iterable[float], smoothed: Iterable[float]) -> float | None:
    """Where the smoothed loss falls fastest against log(lr), before its minimum (skipping the
    first tenth, where the moving average is still settling). None when it never falls."""
    rates = np.asarray(list(lrs), dtype=np.float64)
    losses = np.asarray(list(smoothed), dtype=np.float64)
    n = len(losses)
    if n < 8 or len(rates) != n:
        return None
    start, end = n // 10, int(np.argmin(losses))
    if end - start < 3:
        return None
    slope = np.gradient(losses[start:end + 1], np.log10(rates[start:end + 1]))
    if slope.min() >= 0:
        return None
    return float(rates[start + int(np.argmin(slope))])


def lr_sweep(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Any],
             criterion: nn.Module, *, base_lr: float, start_lr: float = START_LR,
             end_lr: float = END_LR, steps: int = STEPS, device: torch.device | None = None,
             autocast: Any = None, stop: threading.Event | None = None,
             progress: Progress | None = None, train_mode: Callable[[], None] | None = None
             ) -> LRFinderResult:
    """Sweep ``optimizer``'s groups from ``start_lr`` to ``end_lr`` (as base learning rates)
    over ``steps`` batches, cycling ``batches``. The model's parameters and buffers, its
    train/eval mode and the optimizer's state are put back afterwards, whatever happens."""
    if not 0 < start_lr < end_lr:
        raise StudioError(f"the learning-rate sweep needs 0 < start ({start_lr}) < end "
                          f"({end_lr})")
    if base_lr <= 0:
        raise StudioError(f"the base learning rate must be positive to scale groups by; got "
                          f"{base_lr}")
    steps = max(2, int(steps))
    device = device or next(model.parameters()).device
    model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer_state = _clone(optimizer.state_dict())
    modes = {name: m.training for name, m in model.named_modules()}
    group_lrs = [float(g["lr"]) for g in optimizer.param_groups]
    ratio = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, ended = 0.0, math.inf, "finished"
    beta = smoothing_for(steps)
    try:
        (train_mode or model.train)()
        data = _cycle(batches)
        for step in range(steps):
            if stop is not None and stop.is_set():
                ended = "stopped"
                break
            lr = start_lr * ratio ** step
            for group, group_lr in zip(optimizer.param_groups, group_lrs, strict=True):
                group["lr"] = group_lr * lr / base_lr
            images, targets = next(data)
            images, targets = images.to(device), targets.to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast if autocast is not None else torch.autocast(device.type,
                                                                       enabled=False):
                loss = criterion(model(images), targets)
            loss.backward()
            optimizer.step()
            value = float(loss.item())
            if not math.isfinite(value):
                ended = "diverged"
                break
            average = beta * average + (1 - beta) * value
            smooth = average / (1 - beta ** (step + 1))
            lrs.append(lr)
            losses.append(value)
            smoothed.append(smooth)
            best = min(best, smooth)
            if progress is not None:
                progress(step + 1, steps, lr, smooth)
            if step > 10 and smooth > DIVERGE * best:
                ended = "diverged"
                break
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        for name, module in model.named_modules():
            module.train(modes.get(name, module.training))
    return LRFinderResult(tuple(lrs), tuple(losses), tuple(smoothed),
                          suggest_lr(lrs, smoothed), ended, base_lr)


def smoothing_for(steps: int) -> float:
    """A moving average about a tenth of the sweep long: fastai's 0.98 lags 50 steps, which
    on a short sweep drags the suggestion far to the left of where the loss falls fastest."""
    low, high = SMOOTHING
    return min(high, max(low, 1.0 - 10.0 / max(1, steps)))


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise StudioError("the training split holds no images to sweep the learning rate on")


def find_lr(config: Any, scan: Any = None, *, steps: int = STEPS, start_lr: float = START_LR,
            end_lr: float = END_LR, stop: threading.Event | None = None,
            progress: Progress | None = None) -> LRFinderResult:
    """Build the run ``config`` describes (weights, head, freeze spec, groups, optimizer,
    precision) with :func:`build_parts`, as the trainer does, and sweep it on the training
    split. Nothing is written to disk."""
    from studio.engine.parts import build_parts
    from studio.engine.runtime import autocast_for, seed_everything

    if not config.data.root and scan is None:
        raise StudioError("no dataset folder is set; choose one before finding a learning rate")
    seed_everything(config.train.seed)
    parts = build_parts(config, scan)
    assert parts.optimizer is not None
    try:
        # bf16 as in training; fp16 would need a GradScaler for a few hundred steps, so fp32.
        precision = "fp32" if parts.precision == "fp16" else parts.precision
        return lr_sweep(parts.model, parts.optimizer, parts.train_loader, parts.criterion,
                        base_lr=config.optim.lr, start_lr=start_lr, end_lr=end_lr, steps=steps,
                        device=parts.device, autocast=autocast_for(parts.device, precision),
                        stop=stop, progress=progress, train_mode=parts.train_mode)
    finally:
        parts.close()
