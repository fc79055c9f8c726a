"""Calibration as a user meets it: an over-confident model gets a temperature above 1 and a lower
ECE, the unknown threshold gives the target precision on validation, and the figures travel
through an Evaluation's JSON.

The crafted model: three Gaussian classes in 2-D whose Bayes logits (exactly calibrated) are
multiplied by 5, a decent classifier made five times too sure of itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from studio.engine.calibration import (
    ECE_BINS,
    calibrate,
    calibration_from_json,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
    softmax,
)
from studio.engine.evaluate import Evaluation

SCALE = 5.0


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated logits of three overlapping classes, and the true classes."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [3.0, 0.0], [1.5, 2.6]])
    targets = rng.integers(0, 3, n)
    x = means[targets] + rng.standard_normal((n, 2))
    logits = x @ means.T - 0.5 * (means**2).sum(axis=1)
    return logits, targets


def test_an_over_confident_model_gets_a_temperature_above_one_and_a_lower_ece() -> None:
    logits, targets = blobs(3000, seed=0)
    calibration = calibrate(SCALE * logits, targets)
    assert calibration.temperature == pytest.approx(SCALE, rel=0.15)
    assert calibration.ece > 0.08  # five times too sure
    assert calibration.ece_calibrated < 0.03 and calibration.ece_calibrated < calibration.ece / 3
    assert calibration.nll_calibrated < calibration.nll
    assert len(calibration.bins) == len(calibration.bins_calibrated) == ECE_BINS
    assert sum(b.count for b in calibration.bins) == 3000
    # the raw model's images pile up in the top bin, its accuracy well below its confidence
    top = calibration.bins[-1]
    assert top.count > 1500 and top.confidence - top.accuracy > 0.05


def test_a_calibrated_model_keeps_a_temperature_near_one() -> None:
    logits, targets = blobs(3000, seed=1)
    assert fit_temperature(logits, targets) == pytest.approx(1.0, abs=0.1)


def test_the_temperature_minimises_the_nll() -> None:
    logits, targets = blobs(500, seed=2)
    best = fit_temperature(SCALE * logits, targets)
    at_best = negative_log_likelihood(SCALE * logits, targets, best)
    for other in (best * 0.9, best * 1.1):
        assert negative_log_likelihood(SCALE * logits, targets, other) > at_best


def test_the_unknown_threshold_reaches_the_target_precision_on_validation() -> None:
    logits, targets = blobs(2000, seed=3)
    calibration = calibrate(SCALE * logits, targets, target_precision=0.95)
    threshold = calibration.unknown_threshold
    assert threshold is not None and calibration.coverage is not None
    probs = softmax(SCALE * logits, calibration.temperature)
    kept = probs.max(axis=1) >= threshold
    precision = float((probs.argmax(axis=1)[kept] == targets[kept]).mean())
    assert precision >= 0.95 and calibration.precision == pytest.approx(precision)
    assert calibration.coverage == pytest.approx(kept.mean())
    assert 0.2 < calibration.coverage < 1.0
    # the smallest such threshold: one image more (the next lower confidence) falls short
    below = np.sort(probs.max(axis=1)[~kept])[-1]
    wider = probs.max(axis=1) >= below
    assert (probs.argmax(axis=1)[wider] == targets[wider]).mean() < 0.95


def test_no_reachable_precision_is_reported_not_invented() -> None:
    confidence = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([False, False, True, False])
    assert choose_threshold(confidence, correct, 0.95) is None
    logits = np.log(np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]))
    calibration = calibrate(logits, np.array([1, 1, 1, 0]), target_precision=0.99)
    assert calibration.unknown_threshold is None and calibration.coverage is None
    assert "no threshold reaches precision 0.99" in calibration.note


def test_tied_confidences_are_kept_or_dropped_together() -> None:
    confidence = np.array([0.9, 0.7, 0.7, 0.5])
    correct = np.array([True, True, False, True])
    # at t = 0.7 both tied images count: precision 2/3, so only t = 0.9 reaches 0.9
    assert choose_threshold(confidence, correct, 0.9) == (0.9, 0.25, 1.0)
    assert choose_threshold(confidence, correct, 0.75) == (0.5, 1.0, 0.75)


def test_ece_and_bins_on_a_hand_checked_case() -> None:
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    targets = np.array([0, 1, 0, 0])
    bins = reliability_bins(probs, targets)
    filled = [b for b in bins if b.count]
    assert [(b.count, b.accuracy) for b in filled] == [(2, 1.0), (2, 0.5)]
    assert filled[0].low == pytest.approx(8 / 15) and filled[1].high == 1.0
    expected = 0.5 * abs(1.0 - 0.55) + 0.5 * abs(0.5 - 0.95)
    assert expected_calibration_error(probs, targets) == pytest.approx(expected)


def test_an_evaluation_carries_its_calibration_in_json() -> None:
    logits, targets = blobs(300, seed=4)
    logits = SCALE * logits
    probs = softmax(logits).astype(np.float32)
    evaluation = Evaluation(["a", "b", "c"], [f"{i}.png" for i in range(300)], targets, probs,
                            split="val", logits=logits, target_precision=0.9)
    data = evaluation.to_json()["calibration"]
    for key in ("ece", "ece_calibrated", "temperature", "bins", "unknown_threshold", "coverage",
                "target_precision"):
        assert key in data
    assert data["target_precision"] == 0.9 and data["temperature"] > 1
    assert set(data["bins"][0]) == {"low", "high", "count", "confidence", "accuracy"}
    assert calibration_from_json(data) == evaluation.calibration
    assert "calibration   ECE" in evaluation.report()
    # without logits (an evaluation made from probabilities) the figures are the same
    again = Evaluation(["a", "b", "c"], evaluation.paths, targets, probs, split="val",
                       target_precision=0.9)
    assert again.calibration.temperature == pytest.approx(evaluation.calibration.temperature,
                                                          rel=1e-3)
    assert math.isclose(again.calibration.ece, evaluation.calibration.ece, abs_tol=1e-4)
