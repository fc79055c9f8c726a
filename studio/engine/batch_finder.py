"""Find batch size: the largest training batch that fits on the GPU, less a margin.

:func:`find_batch_size` builds the run's model as the trainer does (weights, head, freeze spec,
groups, optimizer, loss, precision, channels_last) and trains real steps on it (forward, backward
and an optimizer step, its state included) on random images at the run's input size. Batches
double from 2 until memory runs out, then a binary search narrows the largest batch that fits to
within 8 images (to one image below 64). The answer is 90 % of that, rounded down to a multiple
of 8 from 16 on: a real run also holds a validation batch, the loader's pinned batches and a more
fragmented allocator than a search that started empty. The search ends at the training split
(per process): a batch larger than the split is never formed.

The search is conservative where the trainer is clever: it runs the whole model even where the
feature cache would train only the layers after the frozen ones, and it does not compile.

It needs a CUDA GPU; on the CPU or Apple MPS it says so and keeps the configured batch size.
:func:`search_batch_size` is the search alone, over any ``fits(batch)`` probe (tests inject one).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from studio.engine.errors import StudioError
from studio.engine.memory import free_memory, memory_advice

MARGIN = 0.9  # train with this share of the largest batch that fits
MULTIPLE = 8  # …rounded down to a multiple of this (from 2 × MULTIPLE on)
START = 2  # the first batch tried: BatchNorm cannot train on a batch of one
MAX_BATCH = 65_536  # TrainConfig's own bound
SEARCHES_ON = ("cuda",)  # device types the search runs on (a test adds "cpu")


@dataclass(frozen=True, slots=True)
class BatchTrial:
    batch: int
    fits: bool
    peak_mb: float = math.nan  # GPU memory at the step's peak (CUDA only)
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class BatchSizeFound:
    batch_size: int  # what to train with: the configured one unless a search found one
    largest: int | None  # the largest batch that trained a step; None when none did or no search
    trials: tuple[BatchTrial, ...]
    ended: str  # "found", "whole_split", "none_fit", "stopped" or "no_gpu"
    message: str  # one sentence, for the CLI's line and the Train page
    margin: float = MARGIN

    def to_json(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "largest": self.largest, "ended": self.ended,
                "message": self.message, "margin": self.margin,
                "trials": [{"batch": t.batch, "fits": t.fits,
                            "peak_mb": None if math.isnan(t.peak_mb) else round(t.peak_mb, 1),
                            "seconds": round(t.seconds, 3)} for t in self.trials]}


Fits = Callable[[int], "bool | BatchTrial"]
Progress = Callable[[BatchTrial], None]  # after every trial


@dataclass(frozen=True, slots=True)
class Search:
    largest: int | None  # the largest batch that fitted
    bounded: bool  # a batch ran out of memory (else every batch up to the limit fitted)
    stopped: bool
    trials: tuple[BatchTrial, ...]


def search_batch_size(fits: Fits, limit: int, *, start: int = START,
                      stop: threading.Event | None = None,
                      progress: Progress | None = None) -> Search:
    """Double from ``start`` while ``fits``, up to ``limit``; then bisect between the last batch
    that fitted and the first that did not, to within 8 images (1 below 64)."""
    trials: list[BatchTrial] = []

    def tried(batch: int) -> bool | None:
        if stop is not None and stop.is_set():
            return None
        began = time.monotonic()
        answer = fits(batch)
        trial = answer if isinstance(answer, BatchTrial) else \
            BatchTrial(batch, bool(answer), seconds=time.monotonic() - began)
        trials.append(trial)
        if progress is not None:
            progress(trial)
        return trial.fits

    def end(largest: int | None, bounded: bool, stopped: bool = False) -> Search:
        return Search(largest, bounded, stopped, tuple(trials))

    largest, batch = None, max(1, min(start, limit))
    while True:
        fitted = tried(batch)
        if fitted is None:
            return end(largest, False, stopped=True)
        if not fitted:
            break
        largest = batch
        if batch >= limit:
            return end(largest, False)
        batch = min(2 * batch, limit)
    if largest is None:
        return end(None, True)
    failed = batch
    while failed - largest > (1 if largest < 64 else MULTIPLE):
        middle = (largest + failed) // 2
        fitted = tried(middle)
        if fitted is None:
            return end(largest, True, stopped=True)
        largest, failed = (middle, failed) if fitted else (largest, middle)
    return end(largest, True)


def with_margin(largest: int, margin: float = MARGIN) -> int:
    """``margin`` of ``largest``, rounded down to a multiple of 8 once that is 16 or more."""
    batch = math.floor(largest * margin)
    if batch >= 2 * MULTIPLE:
        batch -= batch % MULTIPLE
    return max(1, batch)


def find_batch_size(config: Any, scan: Any = None, *, stop: threading.Event | None = None,
                    progress: Progress | None = None, fits: Fits | None = None) -> BatchSizeFound:
    """The batch size to train ``config`` with on this machine's GPU (see the module's note).
    Quick where there is nothing to search (no GPU: one sentence, the configured size kept); on
    a GPU each trial is one training step, so it answers ``stop`` within a step. ``fits``
    replaces the real trial step (then nothing is built, on any device)."""
    from studio.engine.data import scan_folder
    from studio.engine.runtime import device_label, pick_device, pick_precision

    configured = config.train.batch_size
    device = pick_device(config.train.device)
    if fits is None and device.type not in SEARCHES_ON:
        return BatchSizeFound(configured, None, (), "no_gpu", (
            f"finding the batch size needs a CUDA GPU and this run trains on "
            f"{'Apple MPS' if device.type == 'mps' else 'the CPU'}; keeping the configured "
            f"batch size of {configured}"))
    if scan is None:
        if not config.data.root:
            raise StudioError("no dataset folder is set; choose one before finding the batch "
                              "size")
        scan = scan_folder(config.data.root, config.data.val_fraction, config.train.seed)
    share = math.ceil(len(scan.splits["train"]) / max(1, config.train.processes))
    if share < 1:
        raise StudioError("the training split holds no images, so there is no batch to size")
    limit = min(MAX_BATCH, math.ceil(share / MARGIN))  # room for the margin above the split
    parts = None
    if fits is None:
        parts = _build(config, scan)
        fits = _trial_step(parts)
    try:
        search = search_batch_size(fits, limit, stop=stop, progress=progress)
    finally:
        if parts is not None:
            parts.close()
            del parts, fits
            free_memory(device)
    precision = pick_precision(config.train.precision, device)
    where = device_label(device)
    trials = search.trials
    if search.stopped:
        return BatchSizeFound(configured, search.largest, trials, "stopped",
                              f"the batch-size search was stopped after {len(trials)} trial "
                              f"steps; keeping the configured batch size of {configured}")
    if search.largest is None:
        return BatchSizeFound(configured, None, trials, "none_fit", (
            f"not even a batch of {trials[0].batch if trials else START} fits: "
            f"{config.model.backbone} at {config.data.image_size} px in {precision} does not "
            f"train on {where}; keeping the configured batch size of {configured} — try "
            f"{memory_advice(config, precision)}"))
    batch = min(share, with_margin(search.largest))
    if not search.bounded or batch == share:
        return BatchSizeFound(share, search.largest, trials, "whole_split", (
            f"batch size {share}: the whole training split ({share} images"
            f"{' per process' if config.train.processes > 1 else ''}) fits in one batch on "
            f"{where}, with room to spare"))
    peak = next(t.peak_mb for t in trials if t.batch == search.largest)
    memory = f", {peak / 1024:.1f} GB at its peak" if math.isfinite(peak) else ""
    return BatchSizeFound(batch, search.largest, trials, "found", (
        f"batch size {batch}: the largest batch that trained a step on {where} was "
        f"{search.largest}{memory}, less a {100 - round(100 * MARGIN)} % margin"
        f"{f' rounded down to a multiple of {MULTIPLE}' if batch >= 2 * MULTIPLE else ''} "
        f"({len(trials)} trial steps of {config.model.backbone} at {config.data.image_size} px "
        f"in {precision})"))


def _build(config: Any, scan: Any) -> Any:
    from studio.engine.parts import build_parts
    from studio.engine.runtime import seed_everything

    seed_everything(config.train.seed)
    parts = build_parts(config, scan)
    parts.close()  # the loaders are not used: no workers
    return parts


def _trial_step(parts: Any) -> Callable[[int], BatchTrial]:
    """One training step of ``parts`` on ``batch`` random images: fits or runs out of memory.
    The first step that fits runs twice, so the optimizer's state is in memory from then on."""
    model, optimizer, criterion, device = parts.model, parts.optimizer, parts.criterion, \
        parts.device
    size = parts.built.fixed_input_size or parts.built.preprocessing.crop
    classes = len(parts.scan.classes)
    layout = torch.channels_last if parts.channels_last else torch.contiguous_format
    scaler = torch.amp.GradScaler("cuda") if parts.precision == "fp16" else None
    cuda = device.type == "cuda"
    warm = [False]
    parts.train_mode()

    def step(batch: int) -> None:
        images = torch.randn(batch, 3, size, size, device=device).contiguous(
            memory_format=layout)
        targets = torch.randint(0, classes, (batch,), device=device)
        for _ in range(1 if warm[0] else 2):
            with parts.autocast():
                loss = criterion(model(images), targets)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)
        warm[0] = True

    def trial(batch: int) -> BatchTrial:
        began = time.monotonic()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        try:
            step(batch)
            fitted = True
        except torch.OutOfMemoryError:  # the step's tensors go with its frames after this
            fitted = False
        optimizer.zero_grad(set_to_none=True)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda and fitted else math.nan
        if not fitted:
            free_memory(device)
        return BatchTrial(batch, fitted, peak, time.monotonic() - began)

    return trial
