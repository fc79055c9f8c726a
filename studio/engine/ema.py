"""Model EMA: an exponential moving average of a model's weights, kept beside the trained ones.

After every optimizer step :meth:`ModelEma.update` moves each averaged tensor towards the
model's: ``ema = decay · ema + (1 − decay) · weights``, for parameters and buffers alike
(``AveragedModel(use_buffers=True)``), so BatchNorm statistics are averaged too; integer
buffers (``num_batches_tracked``) follow the model. The average starts at the model's weights
when training starts. With warm-up, update ``t`` (0-based) uses ``min(decay, (1 + t) / (10 + t))``
(TensorFlow's ``ExponentialMovingAverage(num_updates=…)``): 0.1 at first, 0.5 after 8 updates,
0.99 after 890, so a short fine-tuning run averages its recent steps rather than its start.

Only tensors that can have moved are averaged: a parameter that has never trained and the
buffers of a module that has never been in train mode (a frozen backbone, frozen BatchNorm)
still equal their copy, which an update would leave as it is, so it is skipped. That keeps a
head-only run on cached features from spending most of its step averaging the backbone.

The trainer validates both sets of weights each epoch; :func:`better_weights` says which of the
two the monitor prefers, and that one is what the epoch's checkpoint offers evaluate and export
(``"weights": "ema"`` names it; :func:`studio.engine.checkpoint.evaluated_state` reads it).
The average is of the plain model (never a DDP wrapper), so every process of a distributed run
updates it identically; a module that shares the model's layers (the trainable suffix of a
feature-cached split) is mirrored onto the average by :meth:`ModelEma.view`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from studio.engine.metrics import Validation


class ModelEma:
    """The moving average of ``model``'s parameters and buffers, on the model's device."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.updates = 0  # optimizer steps averaged in (a Python int: no device sync per step)
        self._weight = 0.0  # 1 − the decay of the update in progress
        self._live: set[str] = set()  # state keys that have trained (or run in train mode)
        self._skip: set[int] = set()  # data pointers of the averaged tensors that cannot move
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.update_parameters(model)  # the first call copies: the average starts here
        self.averaged.requires_grad_(False)
        self.averaged.eval()
        self._view: tuple[nn.Module, nn.Module] | None = None

    @property
    def module(self) -> nn.Module:
        """The averaged model, with the model's own keys and structure."""
        return self.averaged.module

    def decay_at(self, update: int) -> float:
        """The decay of the ``update``-th update (0-based)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + update) / (10 + update))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average ``model``'s current weights in (after an optimizer step)."""
        self._weight = 1.0 - self.decay_at(self.updates)
        self._follow(model)
        self.averaged.update_parameters(model)
        self.updates += 1

    def _follow(self, model: nn.Module) -> None:
        """Count the tensors that train now as live from now on (a stage may unfreeze some;
        one frozen again later keeps converging to its weights, as the formula says)."""
        live = set(self._live)
        live.update(name for name, param in model.named_parameters() if param.requires_grad)
        for prefix, module in model.named_modules():
            if module.training:
                live.update(name for name, _ in module.named_buffers(prefix=prefix,
                                                                     recurse=False))
        if live != self._live or not self.updates:
            self._live = live
            self._skip = {tensor.data_ptr() for name, tensor in self._tensors()
                          if name not in live}

    def _tensors(self) -> list[tuple[str, Tensor]]:
        return [*self.module.named_parameters(), *self.module.named_buffers()]

    def _average(self, averaged: list[Tensor], current: list[Tensor], _: Any) -> None:
        """AveragedModel's ``multi_avg_fn``: one group of tensors of one device and dtype."""
        pairs = [(mine, theirs) for mine, theirs in zip(averaged, current, strict=True)
                 if mine.data_ptr() not in self._skip]
        if not pairs:
            return
        averaged, current = [mine for mine, _ in pairs], [theirs for _, theirs in pairs]
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, self._weight)
        else:  # integer buffers (BatchNorm's num_batches_tracked) are counts, not weights
            torch._foreach_copy_(averaged, current)

    def view(self, module: nn.Module, model: nn.Module) -> nn.Module:
        """``module`` (``model`` itself, or a module sharing its layers, like the trainable
        suffix of a split model) with the averaged layers in place of ``model``'s."""
        if module is model:
            return self.module
        if self._view is not None and self._view[0] is module:
            return self._view[1]
        memo: dict[int, Any] = {id(model): self.module}
        for (_, mine), (_, theirs) in zip(model.named_modules(), self.module.named_modules(),
                                          strict=True):
            memo[id(mine)] = theirs
        for (_, mine), (_, theirs) in zip(model.named_parameters(),
                                          self.module.named_parameters(), strict=True):
            memo[id(mine)] = theirs
        for (_, mine), (_, theirs) in zip(model.named_buffers(), self.module.named_buffers(),
                                          strict=True):
            memo[id(mine)] = theirs
        mirrored = copy.deepcopy(module, memo).eval()
        self._view = (module, mirrored)
        return mirrored

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The averaged model's state under the model's own keys (no ``module.`` prefix, no
        ``n_averaged``), and where the average is."""
        return {"model": self.module.state_dict(), "updates": self.updates,
                "decay": self.decay, "warmup": self.warmup, "live": sorted(self._live)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.module.load_state_dict(saved["model"])
        self.updates = int(saved["updates"])
        self.averaged.n_averaged.fill_(self.updates + 1)
        names = saved.get("live")  # without it: every tensor may have moved
        self._live = set(names) if names is not None else {n for n, _ in self._tensors()}
        self._skip = {t.data_ptr() for n, t in self._tensors() if n not in self._live}


def better_weights(monitor: str, raw: Validation, ema: Validation | None
                   ) -> tuple[str, Validation]:
    """Which weights the monitor prefers ("raw" or "ema") and their figures. The EMA must be
    strictly better (a tie keeps the trained weights), and finite; with no validation images
    there is nothing to compare, and the trained weights stay."""
    if ema is None or not raw.images or not ema.images:
        return "raw", raw
    mine, theirs = getattr(raw, monitor), getattr(ema, monitor)
    if not math.isfinite(theirs):
        return "raw", raw
    if not math.isfinite(mine):
        return "ema", ema
    better = theirs < mine if monitor == "val_loss" else theirs > mine
    return ("ema", ema) if better else ("raw", raw)


def ema_figures(validated: Validation | None) -> dict[str, float]:
    """The EMA's figures as :class:`EpochEnded` fields (none without EMA)."""
    if validated is None:
        return {}
    return {"ema_val_loss": validated.val_loss, "ema_val_acc": validated.val_acc,
            "ema_macro_f1": validated.macro_f1, "ema_balanced_acc": validated.balanced_acc}
