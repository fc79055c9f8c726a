"""The live learning view's figures: per trainable parameter, the gradient norm and how far one
optimizer step moved it relative to its size (the update-to-weight ratio, ‖Δw‖/‖w‖).

A :class:`LearningProbe` watches the :class:`~studio.engine.optim.Stepper` and samples one step
at most every :data:`SAMPLE_INTERVAL` seconds: just before ``optimizer.step()`` it takes the
gradients' norms (unscaled under fp16, before clipping) and a copy of the parameters, just after
it the norms of the differences, and then it makes one host sync for all of them. Steps in
between cost one clock read. The probe times itself and waits longer between samples when a
sample costs more than :data:`OVERHEAD_BUDGET` of the time between them (a big model on a CPU),
so the view never costs more than a few per cent of training. A sampled step holds one extra
copy of the trainable weights while the optimizer steps; if that copy does not fit in memory,
sampling stops for the rest of the fit (training goes on).

Gradients are the ones the optimizer uses, so under DistributedDataParallel they are the
all-reduced ones; only rank 0 has callbacks, so only rank 0 samples.

Names come from the optimizer's groups (``param_names``): the model's own names, also when the
trainer trains a feature-cache suffix (its modules, and so its parameter tensors, are the
model's). The figures go to callbacks as a :class:`~studio.engine.events.LayerStats` event;
they are not written to metrics.jsonl (a few floats per tensor twice a second is a lot of file
for little use after the run).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from studio.engine.events import Callback, LayerStats
from studio.engine.optim import Stepper

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 0.5  # seconds between sampled steps: the Layers tree refreshes twice a second
OVERHEAD_BUDGET = 0.03  # the most of the wall time that sampling may take


class LearningProbe:
    """A :class:`~studio.engine.optim.StepObserver` that turns a sampled step into LayerStats."""

    def __init__(self, emit: Callable[[LayerStats], None], interval: float = SAMPLE_INTERVAL,
                 clock: Callable[[], float] = time.monotonic,
                 budget: float = OVERHEAD_BUDGET) -> None:
        self._emit, self._interval, self._clock, self._budget = emit, interval, clock, budget
        self._due = -math.inf  # the first step is sampled: the tree fills at once
        self._spent = 0.0  # seconds the current sample has taken so far
        self._names: list[str] = []
        self._params: list[torch.Tensor] = []
        self._before: list[torch.Tensor] = []
        self._grad_norms: list[torch.Tensor] = []
        self._weight_norms: list[torch.Tensor] = []

    def wants(self) -> bool:
        return self._clock() >= self._due

    @torch.no_grad()
    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        began = self._clock()
        try:
            self._take_before(optimizer)
        except torch.OutOfMemoryError:
            self._names, self._params, self._before = [], [], []
            self._due = math.inf
            log.warning("the live learning view stopped: a copy of the trainable weights "
                        "does not fit in memory")
        self._spent = self._clock() - began

    def _take_before(self, optimizer: torch.optim.Optimizer) -> None:
        names, params = [], []
        for group in optimizer.param_groups:
            for name, param in zip(group["param_names"], group["params"], strict=True):
                if param.grad is not None and not param.grad.is_sparse:
                    names.append(name)
                    params.append(param)
        self._names, self._params = names, params
        if not params:
            return
        self._grad_norms = torch._foreach_norm([p.grad for p in params])
        self._before = [p.detach().clone() for p in params]
        self._weight_norms = torch._foreach_norm(self._before)

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer, global_step: int) -> None:
        began = self._clock()
        names, params, before = self._names, self._params, self._before
        grads, weights = self._grad_norms, self._weight_norms
        self._names, self._params, self._before = [], [], []  # keep no copies between samples
        self._grad_norms, self._weight_norms = [], []
        if not params:
            return
        torch._foreach_sub_(before, [p.detach() for p in params])  # before := -Δw
        updates = torch._foreach_norm(before)
        norms = torch.stack([n.float() for n in (*grads, *weights, *updates)])
        values = norms.tolist()  # the one host sync of a sample
        if not all(math.isfinite(v) for v in values):
            return  # an fp16 step the scaler skipped: try the next step
        count = len(names)
        self._emit(LayerStats(
            global_step=global_step,
            grad_norm=dict(zip(names, values[:count], strict=True)),
            weight_norm=dict(zip(names, values[count:2 * count], strict=True)),
            update_norm=dict(zip(names, values[2 * count:], strict=True))))
        now = self._clock()
        spent = self._spent + now - began
        self._due = now + max(self._interval, spent / self._budget)


def listens(callbacks: Sequence[Callback]) -> bool:
    """Whether any callback overrides ``on_layer_stats`` (the GUI's relay and the JSON lines of
    a multi-process run do; the terminal and the run folder do not)."""
    return any(type(c).on_layer_stats is not Callback.on_layer_stats for c in callbacks)


def watch(stepper: Stepper, callbacks: Sequence[Callback],
          emit: Callable[[str, Any], None]) -> None:
    """Sample ``stepper``'s steps for ``callbacks`` if any of them listens; a run nobody watches
    pays nothing."""
    if listens(callbacks):
        stepper.observer = LearningProbe(lambda event: emit("on_layer_stats", event))
