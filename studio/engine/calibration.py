"""When to trust a model's probabilities: expected calibration error, reliability bins,
temperature scaling and an "unknown" threshold, all from validation logits (numpy only).

- ECE uses 15 equal-width bins of the top-class probability over [0, 1] (the first bin closed
  at 0, each bin ``(low, high]``): the count-weighted mean of |accuracy − mean confidence|.
- The temperature ``T`` minimises the mean negative log-likelihood of ``softmax(logits / T)``
  by a golden-section search on ``log T`` over [1/20, 20]. The NLL is convex in ``1/T``, so it
  has one minimum there and the search finds it to 1e-6 in ``log T``; ``T > 1`` softens an
  over-confident model, ``T < 1`` sharpens an under-confident one.
- The unknown threshold is the smallest calibrated top probability ``t`` such that the images
  answered at ``p >= t`` reach the target precision on validation (so it keeps the most
  images); the others would be answered "unknown". ``coverage`` is the share answered.

Fitted on the images given (the validation split, normally); figures measured on the same
images are optimistic for a small split, and the report says how many images it used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

ECE_BINS = 15
TARGET_PRECISION = 0.95
MIN_LOG_T, MAX_LOG_T = math.log(1 / 20), math.log(20.0)
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    """One confidence bin: which probabilities fall in it, how many, how sure, how right."""

    low: float
    high: float
    count: int
    confidence: float  # mean top probability in the bin (0 when empty)
    accuracy: float  # share of those images answered correctly (0 when empty)

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "count": self.count,
                "confidence": self.confidence, "accuracy": self.accuracy}


@dataclass(frozen=True, slots=True)
class Calibration:
    """What calibration found on a set of images, before and after temperature scaling."""

    images: int
    temperature: float
    ece: float  # of the model as it is
    ece_calibrated: float  # after dividing the logits by ``temperature``
    nll: float
    nll_calibrated: float
    bins: tuple[ReliabilityBin, ...]
    bins_calibrated: tuple[ReliabilityBin, ...]
    target_precision: float
    unknown_threshold: float | None  # None: no threshold reaches the target precision
    coverage: float | None  # share of the images answered at that threshold
    precision: float | None  # the precision reached there
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "bins_count": len(self.bins),
                "method": "temperature scaling (golden-section search on log T, NLL)",
                "temperature": self.temperature, "ece": self.ece,
                "ece_calibrated": self.ece_calibrated, "nll": self.nll,
                "nll_calibrated": self.nll_calibrated,
                "bins": [b.to_json() for b in self.bins],
                "bins_calibrated": [b.to_json() for b in self.bins_calibrated],
                "target_precision": self.target_precision,
                "unknown_threshold": self.unknown_threshold, "coverage": self.coverage,
                "precision": self.precision, "note": self.note}

    def export_metadata(self) -> dict[str, Any]:
        """What an exported model carries: enough for predict.py to apply both."""
        return {"temperature": self.temperature, "unknown_threshold": self.unknown_threshold,
                "target_precision": self.target_precision, "coverage": self.coverage,
                "ece": self.ece, "ece_calibrated": self.ece_calibrated,
                "fitted_on_images": self.images}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def reliability_bins(probabilities: np.ndarray, targets: np.ndarray,
                     bins: int = ECE_BINS) -> tuple[ReliabilityBin, ...]:
    """Equal-width bins of the top probability: count, mean confidence and accuracy of each."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    confidence = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
    correct = (probabilities.argmax(axis=1) == targets) if len(probabilities) else np.zeros(0)
    # bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 goes to the first bin
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        mask = which == i
        count = int(mask.sum())
        out.append(ReliabilityBin(i / bins, (i + 1) / bins, count,
                                  float(confidence[mask].mean()) if count else 0.0,
                                  float(correct[mask].mean()) if count else 0.0))
    return tuple(out)


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width bins: Σ (count/N) · |accuracy − confidence|."""
    table = reliability_bins(probabilities, targets, bins)
    total = sum(b.count for b in table)
    if not total:
        return 0.0
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in table))


def negative_log_likelihood(logits: np.ndarray, targets: np.ndarray,
                            temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / T)`` against ``targets``."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_z = (top + np.log(np.exp(scaled - top).sum(axis=1, keepdims=True)))[:, 0]
    picked = scaled[np.arange(len(scaled)), np.asarray(targets, dtype=np.int64)]
    return float(np.mean(log_z - picked)) if len(scaled) else 0.0


def fit_temperature(logits: np.ndarray, targets: np.ndarray, tolerance: float = 1e-6) -> float:
    """The ``T`` in [1/20, 20] minimising the NLL: golden-section search on ``log T``."""
    logits = np.asarray(logits, dtype=np.float64)
    if not len(logits):
        return 1.0

    def nll(log_t: float) -> float:
        return negative_log_likelihood(logits, targets, math.exp(log_t))

    low, high = MIN_LOG_T, MAX_LOG_T
    a, b = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    fa, fb = nll(a), nll(b)
    while high - low > tolerance:
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - _GOLDEN * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + _GOLDEN * (high - low)
            fb = nll(b)
    return float(math.exp((low + high) / 2))


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target: float
                     ) -> tuple[float, float, float] | None:
    """(threshold, coverage, precision): the smallest top probability ``t`` whose images
    answered at ``p >= t`` reach ``target`` precision; None when no ``t`` does."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(confidence)
    if not n:
        return None
    order = np.argsort(-confidence, kind="stable")
    sorted_conf = confidence[order]
    precision = np.cumsum(correct[order]) / np.arange(1, n + 1)
    # only the end of a run of equal confidences is a threshold: p >= t keeps the whole run
    ends = np.ones(n, dtype=bool)
    ends[:-1] = sorted_conf[:-1] > sorted_conf[1:]
    good = np.flatnonzero(ends & (precision >= target - 1e-12))
    if not len(good):
        return None
    last = int(good[-1])
    return float(sorted_conf[last]), (last + 1) / n, float(precision[last])


def calibrate(logits: np.ndarray, targets: np.ndarray,
              target_precision: float = TARGET_PRECISION, bins: int = ECE_BINS) -> Calibration:
    """Fit a temperature on these logits, measure ECE before and after, choose the threshold."""
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"the target precision must be in (0, 1]; got {target_precision}")
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    temperature = fit_temperature(logits, targets)
    raw, calibrated = softmax(logits), softmax(logits, temperature)
    confidence = calibrated.max(axis=1) if len(calibrated) else np.zeros(0)
    correct = calibrated.argmax(axis=1) == targets if len(calibrated) else np.zeros(0, bool)
    chosen = choose_threshold(confidence, correct, target_precision)
    notes = []
    if chosen is None:
        notes.append(f"no threshold reaches precision {target_precision:.2f} on these "
                     f"{len(targets)} images, so nothing is answered as unknown")
    if len(targets) < 100:
        notes.append(f"fitted on only {len(targets)} images: temperature and threshold are rough")
    return Calibration(
        images=len(targets), temperature=temperature,
        ece=expected_calibration_error(raw, targets, bins),
        ece_calibrated=expected_calibration_error(calibrated, targets, bins),
        nll=negative_log_likelihood(logits, targets),
        nll_calibrated=negative_log_likelihood(logits, targets, temperature),
        bins=reliability_bins(raw, targets, bins),
        bins_calibrated=reliability_bins(calibrated, targets, bins),
        target_precision=float(target_precision),
        unknown_threshold=None if chosen is None else chosen[0],
        coverage=None if chosen is None else chosen[1],
        precision=None if chosen is None else chosen[2], note="; ".join(notes))


def calibration_from_json(data: dict[str, Any]) -> Calibration:
    """The inverse of :meth:`Calibration.to_json` (for the GUI and saved evaluations)."""
    def table(rows: list[dict[str, Any]]) -> tuple[ReliabilityBin, ...]:
        return tuple(ReliabilityBin(float(r["low"]), float(r["high"]), int(r["count"]),
                                    float(r["confidence"]), float(r["accuracy"])) for r in rows)

    def maybe(key: str) -> float | None:
        value = data.get(key)
        return None if value is None else float(value)

    return Calibration(int(data["images"]), float(data["temperature"]), float(data["ece"]),
                       float(data["ece_calibrated"]), float(data.get("nll", 0.0)),
                       float(data.get("nll_calibrated", 0.0)), table(data["bins"]),
                       table(data.get("bins_calibrated", data["bins"])),
                       float(data["target_precision"]), maybe("unknown_threshold"),
                       maybe("coverage"), maybe("precision"), str(data.get("note", "")))
