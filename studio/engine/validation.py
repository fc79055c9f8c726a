"""One validation pass: loss, accuracy, macro F1, balanced accuracy and the image count over the
whole validation split, each process running its shard and the sums (and the confusion
matrix) reduced over the processes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from studio.engine.metrics import Validation, macro_f1_and_balanced_accuracy
from studio.engine.parts import Parts
from studio.engine.runtime import Placement

Infer = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # the OOM-safe forward (memory.py)


@torch.no_grad()
def validate(parts: Parts, placement: Placement, module: nn.Module, batches: Iterable[Any],
             infer: Infer, stop: threading.Event) -> Validation | None:
    """``module`` (the plain, unwrapped one, or the EMA's counterpart of it) over ``batches``;
    None when ``stop`` was set (alone at once; together, the next training batch answers it,
    where every process checks at the same step)."""
    if not parts.scan.splits["val"]:
        return Validation.empty()
    parts.model.eval()
    module.eval()
    device = parts.device
    classes = len(parts.scan.classes)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = torch.zeros((), dtype=torch.long, device=device)
    matrix = torch.zeros(classes * classes, dtype=torch.long, device=device)
    with parts.autocast():
        for images, targets in batches:
            if not placement.distributed and stop.is_set():
                return None
            images, targets = parts.to_device(images, targets)
            logits = infer(module, images).float()
            total_loss += F.cross_entropy(logits, targets, reduction="sum")
            predicted = logits.argmax(1)
            correct += (predicted == targets).sum()
            seen += targets.shape[0]
            matrix += torch.bincount(targets * classes + predicted, minlength=classes ** 2)
    placement.reduce(total_loss, correct, seen, matrix)
    count = int(seen.item())
    if count == 0:
        return Validation.empty()
    f1, balanced = macro_f1_and_balanced_accuracy(matrix.cpu().numpy().reshape(classes, classes))
    return Validation(total_loss.item() / count, correct.item() / count, f1, balanced, count)
