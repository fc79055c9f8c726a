"""The monitor: val_acc, val_loss, macro_f1 or balanced_acc picks the best epoch and drives early
stopping; every epoch line carries macro F1 and balanced accuracy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from studio.cli import main
from studio.engine.config import RunConfig, TrainConfig
from studio.engine.evaluate import evaluate_run
from studio.engine.metrics import Validation, macro_f1_and_balanced_accuracy
from studio.engine.runs import read_metrics
from studio.engine.trainer import Trainer

# val_acc peaks at epoch 2, val_loss is lowest at 1, macro F1 peaks at 3, balanced acc at 4
HISTORY = [Validation(0.50, 0.70, 0.40, 0.45, 10), Validation(0.60, 0.90, 0.50, 0.55, 10),
           Validation(0.70, 0.80, 0.80, 0.60, 10), Validation(0.90, 0.60, 0.70, 0.75, 10)]


@pytest.mark.parametrize(("monitor", "best"), [("val_acc", 2), ("val_loss", 1),
                                                ("macro_f1", 3), ("balanced_acc", 4)])
def test_the_monitor_picks_its_best_epoch_on_a_crafted_history(monitor: str, best: int,
                                                               tmp_path: Path) -> None:
    trainer = Trainer(RunConfig(train=TrainConfig(monitor=monitor)), tmp_path / "run")
    picked = [epoch for epoch, validated in enumerate(HISTORY, start=1)
              if trainer._track_best(epoch, validated)]
    assert picked[-1] == best and trainer.state.best_epoch == best
    assert trainer.state.best_metric == getattr(HISTORY[best - 1], monitor)


def test_macro_f1_and_balanced_accuracy_follow_their_definitions() -> None:
    import numpy as np

    # class 0: 8 of 10 right; class 1: 1 of 2; class 2: no images (left out of the means)
    matrix = np.array([[8, 2, 0], [1, 1, 0], [0, 0, 0]])
    f1, balanced = macro_f1_and_balanced_accuracy(matrix)
    assert balanced == pytest.approx((0.8 + 0.5) / 2)
    f1_0 = 2 * (8 / 9) * 0.8 / (8 / 9 + 0.8)
    f1_1 = 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5)
    assert f1 == pytest.approx((f1_0 + f1_1) / 2)
    assert all(math.isnan(v) for v in macro_f1_and_balanced_accuracy(np.zeros((2, 2), int)))


def test_epoch_lines_carry_the_figures_evaluate_computes(tiny_dataset: Path,
                                                         tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = main(["train", "--data", str(tiny_dataset), "--out", str(run), "--backbone",
                 "mobilenet_v3_small", "--weights", "none", "--image-size", "32",
                 "--epochs", "2", "--device", "cpu", "--precision", "fp32", "--workers", "0",
                 "--monitor", "macro_f1", "--no-tensorboard"])
    assert code == 0
    epochs = [r for r in read_metrics(run) if r["event"] == "epoch"]
    end = [r for r in read_metrics(run) if r["event"] == "fit_end"][-1]
    best = max(epochs, key=lambda r: r["macro_f1"])  # the first of equals wins, as in the run
    assert end["best_epoch"] == best["epoch"] and end["best_metric"] == best["macro_f1"]
    assert RunConfig.load(run / "config.toml").train.monitor == "macro_f1"
    evaluation = evaluate_run(run, checkpoint="last", device="cpu")
    assert epochs[-1]["macro_f1"] == pytest.approx(evaluation.macro.f1, abs=1e-6)
    assert epochs[-1]["balanced_acc"] == pytest.approx(evaluation.macro.recall, abs=1e-6)
