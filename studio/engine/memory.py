"""Running out of GPU memory in a step: split the batch, keep the effective batch, say so.

:class:`MicroBatcher` runs each loader batch's forward and backward in ``chunks`` pieces (one
until memory runs out). Each piece's loss is weighted by its share of the batch's normaliser (its
images, or its class weights under a class-weighted loss), so the summed gradient is the whole
batch's: the optimizer steps as often, on the same effective batch, at the same learning rate.

On ``torch.OutOfMemoryError`` it drops the attempt's tensors (they die with the attempt's frames
once the exception is handled), empties the allocator's cache, doubles ``chunks`` and redoes the
batch: batches of 64 go on as 2 × 32 per step, in the same epoch, for the rest of the fit.

What happens to gradients already accumulated. An OOM can strike in the middle of a backward
pass, when some parameters' ``.grad`` hold the failed piece's share and others do not, so nothing
can be subtracted. The gradients are therefore set to None and the whole accumulation window is
redone: the window's earlier batches (kept by reference, exactly as they trained: mixed images and
targets, no copy) and the failed batch, in the new pieces. The update after a recovery equals the
update without one, up to float rounding. A forward pass also changes things other than
gradients, and those are not undone: BatchNorm layers in training mode update their running
statistics again for every redone batch, and dropout draws new masks. (BatchNorm batch statistics
are per piece, as with any micro-batching.)

Validation (:meth:`MicroBatcher.infer`) halves its pieces the same way; it keeps no state, so a
retried validation batch is exact.

In a distributed run an OOM is not redone: DDP's forward broadcasts BatchNorm buffers and its
backward exchanges gradients, so one process running extra forwards or backwards would pair its
collectives with the wrong ones of the others. The run stops with a sentence that names the
--batch-size and --accumulate giving the same effective batch. (The pieces themselves are
DDP-ready: all but the last piece of a stepping batch run under ``no_sync``.)
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from studio.engine.config import RunConfig
from studio.engine.errors import StudioError
from studio.engine.optim import Stepper
from studio.engine.runtime import device_label

log = logging.getLogger(__name__)


class OutOfMemory(StudioError):
    """Even one image at a time does not fit: one sentence naming the model and what to try."""


def who_ran_out(device: torch.device) -> str:
    """The subject of "… ran out of memory" for a device."""
    return {"cuda": "CUDA", "mps": "MPS"}.get(device.type, "the CPU")


def free_memory(device: torch.device) -> None:
    """Give cached blocks back after an OOM (the tensors themselves must be unreferenced)."""
    gc.collect()  # autograd graphs can hold reference cycles through hooks
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def memory_advice(config: RunConfig, precision: str) -> str:
    """What to try when a model does not fit, leaving out what the config already does."""
    tries = [f"a smaller image size than {config.data.image_size} px"]
    if config.freeze.preset != "head_only":
        tries.append("freezing more layers (head_only trains the head alone)")
    if precision == "fp32":
        tries.append("bf16 or fp16 precision")
    tries.append(f"a smaller backbone than {config.model.backbone}")
    return ", ".join(tries[:-1]) + f" or {tries[-1]}"


def out_of_memory_sentence(config: RunConfig, precision: str, device: torch.device,
                           where: str, kept: str = "") -> str:
    """One sentence: what ran out where, the model and image size, and what to try."""
    return (f"{who_ran_out(device)} ran out of memory {where}: {config.model.backbone} at "
            f"{config.data.image_size} px in {precision} does not fit on "
            f"{device_label(device)}; training stopped{kept} — try "
            f"{memory_advice(config, precision)}")


def normaliser(criterion: nn.Module, goal: torch.Tensor) -> float | torch.Tensor:
    """What ``criterion``'s mean divides by for targets ``goal``: the sum of the targets' class
    weights under a class-weighted cross-entropy (labels or class probabilities, as
    :class:`~studio.engine.optim.CrossEntropy` and torch do), else the number of images."""
    weight = getattr(criterion, "weight", None)
    if isinstance(criterion, nn.CrossEntropyLoss) and weight is not None \
            and criterion.reduction == "mean":
        return (goal * weight).sum() if goal.ndim == 2 else weight[goal].sum()
    return float(goal.shape[0])


class MicroBatcher:
    """Forward and backward of each loader batch, in as many pieces as memory needs."""

    def __init__(self, stepper: Stepper, criterion: nn.Module, autocast: Callable[[], Any],
                 device: torch.device, config: RunConfig, precision: str, *,
                 warn: Callable[[str], None] = lambda message: None,
                 kept: Callable[[], str] = lambda: "", distributed: bool = False) -> None:
        self.stepper, self.criterion, self.autocast = stepper, criterion, autocast
        self.device, self.config, self.precision = device, config, precision
        self.warn, self.kept, self.distributed = warn, kept, distributed
        self.chunks = 1  # pieces per training batch; doubles on each OOM, for the rest of the fit
        self.val_chunks = 1  # pieces per validation batch
        self._window: list[tuple[torch.Tensor, torch.Tensor]] = []  # this window's batches

    # -- training -------------------------------------------------------------------------

    def train(self, forward: nn.Module, images: torch.Tensor, goal: torch.Tensor, *,
              accumulate: int, stepping: bool, ddp: Any = None, epoch: int = 0, step: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the gradient of ``criterion(forward(images), goal) / accumulate`` to ``.grad``
        and return the batch's loss and logits, detached. ``stepping``: the optimizer steps
        after this batch (it ends the accumulation window; under DDP its last piece syncs)."""
        retry = False
        while True:
            if retry:
                self.stepper.optimizer.zero_grad(set_to_none=True)
            try:
                if retry:
                    for earlier, earlier_goal in self._window:
                        self._pieces(forward, earlier, earlier_goal, accumulate, False, ddp)
                loss, logits = self._pieces(forward, images, goal, accumulate, stepping, ddp)
                break
            except torch.OutOfMemoryError as error:  # text only: a record holding the error
                log.info("out of memory in a training step: %s", str(error))  # holds frames
            # Out of the except block the traceback is gone, and with it the attempt's frames
            # and the activations and graph they held: now the memory can be given back.
            self._shrink(max(b.shape[0] for b, _ in [*self._window, (images, goal)]),
                         epoch, step)
            retry = True
        if stepping:
            self._window.clear()
        else:
            self._window.append((images, goal))
        return loss, logits

    def _pieces(self, forward: nn.Module, images: torch.Tensor, goal: torch.Tensor,
                accumulate: int, stepping: bool, ddp: Any) -> tuple[torch.Tensor, torch.Tensor]:
        count = min(self.chunks, images.shape[0])
        if count == 1:  # the common case, exactly the plain step
            with self._sync(ddp, stepping):
                with self.autocast():
                    logits = forward(images)
                    loss = self.criterion(logits, goal)
                self.stepper.backward(loss / accumulate)
            return loss.detach(), logits.detach()
        total = normaliser(self.criterion, goal)
        losses, outputs = [], []
        pieces = zip(images.tensor_split(count), goal.tensor_split(count), strict=True)
        for index, (part, part_goal) in enumerate(pieces):
            syncs = stepping and index == count - 1
            with self._sync(ddp, syncs):
                with self.autocast():
                    logits = forward(part)
                    loss = self.criterion(logits, part_goal)
                share = normaliser(self.criterion, part_goal) / total
                self.stepper.backward(loss * share / accumulate)
            losses.append(loss.detach().float() * share)
            outputs.append(logits.detach())
        return torch.stack(losses).sum(), torch.cat(outputs)

    def _sync(self, ddp: Any, syncs: bool) -> Any:
        """DDP exchanges gradients only in the backward of a stepping batch's last piece."""
        return ddp.no_sync() if ddp is not None and not syncs else contextlib.nullcontext()

    def _shrink(self, batch: int, epoch: int, step: int) -> None:
        free_memory(self.device)
        where = f"in epoch {epoch} at step {step}"
        piece = math.ceil(batch / self.chunks)
        if piece <= 1:
            raise OutOfMemory(out_of_memory_sentence(
                self.config, self.precision, self.device,
                f"{where} even with one image at a time", self.kept()))
        if self.distributed:
            accumulate = self.config.train.accumulate
            raise OutOfMemory(
                f"{who_ran_out(self.device)} ran out of memory {where} with batches of {piece} "
                f"per process, and one process of a distributed run cannot split its batch "
                f"without the others; training stopped{self.kept()} — train with --batch-size "
                f"{max(1, piece // 2)} --accumulate {2 * accumulate} for the same effective "
                f"batch, or with --batch-size auto")
        self.chunks *= 2
        message = (f"{who_ran_out(self.device)} ran out of memory {where} with batches of "
                   f"{piece}; continuing with {self.chunks} × {math.ceil(batch / self.chunks)} "
                   f"per step, the same effective batch")
        log.warning(message)
        self.warn(message)

    # -- validation -----------------------------------------------------------------------

    def infer(self, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``module(images)`` (the caller holds no_grad and autocast), in pieces once memory
        has run out in validation."""
        while True:
            count = min(self.val_chunks, images.shape[0])
            try:
                if count == 1:
                    return module(images)
                return torch.cat([module(part) for part in images.tensor_split(count)])
            except torch.OutOfMemoryError as error:
                log.info("out of memory in validation: %s", str(error))
            free_memory(self.device)
            piece = math.ceil(images.shape[0] / self.val_chunks)
            if piece <= 1:
                raise OutOfMemory(out_of_memory_sentence(
                    self.config, self.precision, self.device,
                    "in validation even with one image at a time", self.kept()))
            self.val_chunks *= 2
            message = (f"{who_ran_out(self.device)} ran out of memory in validation with "
                       f"batches of {piece}; validating {self.val_chunks} × "
                       f"{math.ceil(images.shape[0] / self.val_chunks)} at a time")
            log.warning(message)
            self.warn(message)
