"""Classification metrics from a confusion matrix: numpy only, so the training loop can use them
without loading the evaluation module (and torch-free callers can too).

Undefined ratios follow scikit-learn's ``zero_division=0``: a class never predicted has precision
0, a class with no images has recall 0 (and support 0). Macro averages are taken over the classes
that have images, so a class absent from a split does not drag the average down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int

    def to_json(self) -> dict[str, float | int]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                "support": self.support}


def confusion_matrix(targets: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """Counts: rows are true classes, columns predicted classes."""
    targets = np.asarray(targets, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    flat = np.bincount(targets * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_metrics(matrix: np.ndarray) -> list[ClassMetrics]:
    """Precision, recall, F1 and support of every class of a confusion matrix."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1)
    out = []
    for tp, pred, sup in zip(true_positive, predicted, support, strict=True):
        precision = tp / pred if pred else 0.0
        recall = tp / sup if sup else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append(ClassMetrics(float(precision), float(recall), float(f1), int(sup)))
    return out


def average_metrics(metrics: Sequence[ClassMetrics]) -> tuple[ClassMetrics, ClassMetrics]:
    """(macro, weighted) averages over the classes with support; support is the total."""
    present = [m for m in metrics if m.support > 0]
    total = sum(m.support for m in present)
    if not present:
        empty = ClassMetrics(0.0, 0.0, 0.0, 0)
        return empty, empty

    def mean(key: str, weights: Sequence[float]) -> float:
        return float(sum(getattr(m, key) * w for m, w in zip(present, weights, strict=True))
                     / sum(weights))

    macro_w = [1.0] * len(present)
    weighted_w = [float(m.support) for m in present]
    macro = ClassMetrics(mean("precision", macro_w), mean("recall", macro_w),
                         mean("f1", macro_w), total)
    weighted = ClassMetrics(mean("precision", weighted_w), mean("recall", weighted_w),
                            mean("f1", weighted_w), total)
    return macro, weighted


def macro_f1_and_balanced_accuracy(matrix: np.ndarray) -> tuple[float, float]:
    """Macro F1 and balanced accuracy (the mean recall) over the classes with images; NaN when
    no class has any."""
    macro, _ = average_metrics(per_class_metrics(matrix))
    if macro.support == 0:
        return float("nan"), float("nan")
    return macro.f1, macro.recall


@dataclass(frozen=True)
class Validation:
    """One pass over the validation split; the names are the monitor's choices."""

    val_loss: float
    val_acc: float
    macro_f1: float
    balanced_acc: float
    images: int

    @classmethod
    def empty(cls) -> Validation:
        nan = float("nan")
        return cls(nan, nan, nan, nan, 0)
