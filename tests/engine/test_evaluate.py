"""Evaluation: metrics checked against hand-computed cases, an evaluated run's report and JSON,
predictions for single files, and a learning-rate finder that leaves the model as it found it."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from studio.engine.config import (
    DataConfig,
    FreezeSpec,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from studio.engine.errors import DatasetError
from studio.engine.evaluate import (
    Evaluation,
    EvaluationCancelled,
    Predictor,
    average_metrics,
    confusion_matrix,
    evaluate_run,
    most_confused,
    per_class_metrics,
)
from studio.engine.lr_finder import find_lr, lr_sweep, suggest_lr

LABELS = ["blue", "green", "red"]

# Four classes: class 2 is never predicted, class 3 has no images in the split.
TARGETS = [0, 0, 0, 1, 1, 2, 2]
PREDICTED = [0, 0, 1, 1, 3, 0, 1]


def approx(value: float) -> object:
    return pytest.approx(value, abs=1e-9)


# -- metrics by hand ----------------------------------------------------------------------------


def test_confusion_matrix_rows_are_true_columns_predicted() -> None:
    matrix = confusion_matrix(TARGETS, PREDICTED, 4)
    assert matrix.tolist() == [[2, 1, 0, 0],
                               [0, 1, 0, 1],
                               [1, 1, 0, 0],
                               [0, 0, 0, 0]]


def test_per_class_metrics_match_hand_computed_values() -> None:
    metrics = per_class_metrics(confusion_matrix(TARGETS, PREDICTED, 4))
    c0, c1, c2, c3 = metrics
    assert (c0.precision, c0.recall, c0.f1, c0.support) == (approx(2 / 3), approx(2 / 3),
                                                            approx(2 / 3), 3)
    assert (c1.precision, c1.recall, c1.f1, c1.support) == (approx(1 / 3), approx(1 / 2),
                                                            approx(0.4), 2)
    # never predicted: precision 0/0 → 0, and so recall 0 and F1 0
    assert (c2.precision, c2.recall, c2.f1, c2.support) == (0.0, 0.0, 0.0, 2)
    # no images in the split but predicted once: precision 0/1, recall 0/0 → 0
    assert (c3.precision, c3.recall, c3.f1, c3.support) == (0.0, 0.0, 0.0, 0)


def test_macro_average_skips_classes_without_images_weighted_uses_support() -> None:
    macro, weighted = average_metrics(per_class_metrics(confusion_matrix(TARGETS, PREDICTED, 4)))
    assert (macro.precision, macro.recall, macro.f1) == (approx(1 / 3), approx(7 / 18),
                                                         approx(16 / 45))
    assert (weighted.precision, weighted.recall, weighted.f1) == (approx(8 / 21), approx(3 / 7),
                                                                  approx(0.4))
    assert macro.support == weighted.support == 7


def test_most_confused_pairs_largest_first_then_label_order() -> None:
    matrix = confusion_matrix([0, 0, 0, 1, 2, 2], [1, 1, 2, 0, 0, 2], 3)
    assert most_confused(matrix) == [(0, 1, 2), (0, 2, 1), (1, 0, 1), (2, 0, 1)]
    assert most_confused(np.eye(3, dtype=int)) == []


def one_hot_probabilities(predicted: list[int], classes: int, confidence: float) -> np.ndarray:
    probs = np.full((len(predicted), classes), (1 - confidence) / (classes - 1), np.float32)
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


def test_an_evaluation_from_probabilities() -> None:
    labels = ["a", "b", "c", "d"]
    probs = one_hot_probabilities(PREDICTED, 4, 0.7)
    probs[5] = [0.97, 0.01, 0.01, 0.01]  # true c, predicted a with 97 %: the worst mistake
    evaluation = Evaluation(labels, [f"{i}.png" for i in range(7)], TARGETS, probs)
    assert evaluation.accuracy == approx(3 / 7)
    assert evaluation.top5_accuracy is None  # five classes or fewer: always 100 %, not shown
    cell = evaluation.cell(2, 0)
    assert [r.path for r in cell] == ["5.png"]
    assert cell[0].confidence == pytest.approx(0.97)
    losses = evaluation.top_losses(3)
    assert losses[0].path == "5.png" and losses[0].loss == pytest.approx(-np.log(0.01))
    assert [r.loss for r in losses] == sorted((r.loss for r in losses), reverse=True)
    assert all(not r.correct for r in evaluation.misclassified())
    assert len(evaluation.misclassified()) == 4
    assert evaluation.most_confused(2) == [("a", "b", 1), ("b", "d", 1)]


def test_top5_accuracy_with_more_than_five_classes() -> None:
    labels = [f"c{i}" for i in range(7)]
    probs = np.zeros((2, 7), np.float32)
    probs[0] = [0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05]  # true 4: fifth place, in the top 5
    probs[1] = [0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05]  # true 6: last, outside it
    evaluation = Evaluation(labels, ["x.png", "y.png"], [4, 6], probs)
    assert evaluation.accuracy == 0.0
    assert evaluation.top5_accuracy == 0.5


def test_json_has_the_documented_shape() -> None:
    evaluation = Evaluation(["a", "b", "c", "d"], [f"{i}.png" for i in range(7)], TARGETS,
                            one_hot_probabilities(PREDICTED, 4, 0.7))
    data = json.loads(json.dumps(evaluation.to_json()))
    assert data["labels"] == ["a", "b", "c", "d"]
    assert data["accuracy"] == approx(3 / 7)
    assert data["confusion_matrix"][2] == [1, 1, 0, 0]
    assert set(data["per_class"]) == {"a", "b", "c", "d"}
    assert data["per_class"]["b"] == {"precision": approx(1 / 3), "recall": 0.5,
                                      "f1": approx(0.4), "support": 2}
    assert {"macro_avg", "weighted_avg", "most_confused", "top_losses", "misclassified",
            "top5_accuracy"} <= set(data)
    assert data["top_losses"][0].keys() >= {"path", "true", "predicted", "confidence", "loss"}


# -- a trained run ------------------------------------------------------------------------------


def test_evaluating_a_run_on_its_validation_split(trained_run: Path) -> None:
    seen: list[tuple[int, int]] = []
    evaluation = evaluate_run(trained_run, progress=lambda done, total: seen.append((done, total)))
    assert evaluation.labels == json.loads((trained_run / "labels.json").read_text())
    assert evaluation.split == "val" and evaluation.images == 9  # 30 % of 10 per class
    assert evaluation.matrix.sum() == 9 and evaluation.matrix.shape == (3, 3)
    assert [m.support for m in evaluation.per_class] == [3, 3, 3]
    assert evaluation.accuracy >= 2 / 3, "the run should tell the colours apart"
    assert seen and seen[-1] == (9, 9)
    report = evaluation.report()
    assert "accuracy" in report and "macro avg" in report and "blue" in report


def test_the_last_checkpoint_and_a_stop(trained_run: Path) -> None:
    assert evaluate_run(trained_run, checkpoint="last").checkpoint == "last"
    stop = threading.Event()
    stop.set()
    with pytest.raises(EvaluationCancelled):
        evaluate_run(trained_run, stop=stop)


def test_another_folder_missing_a_class_and_holding_a_foreign_one(
        trained_run: Path, tmp_path: Path, make_tiny_dataset: Callable[..., Path]) -> None:
    held_out = make_tiny_dataset(tmp_path / "held_out", per_class=4, size=16)
    shutil.rmtree(held_out / "green")
    foreign = held_out / "purple"
    foreign.mkdir()
    Image.new("RGB", (16, 16), (128, 0, 128)).save(foreign / "p.png")
    evaluation = evaluate_run(trained_run, data=held_out)
    assert evaluation.split == "all" and evaluation.images == 8
    green = evaluation.per_class[LABELS.index("green")]
    assert green.support == 0 and green.recall == 0.0
    assert any("purple" in note for note in evaluation.notes)
    assert evaluation.macro.support == 8


def test_a_folder_of_other_classes_is_one_sentence(trained_run: Path, tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "x.png")
    with pytest.raises(DatasetError, match="none of the classes") as error:
        evaluate_run(trained_run, data=tmp_path)
    assert "\n" not in str(error.value)


def test_predicting_single_files(trained_run: Path, tmp_path: Path) -> None:
    predictor = Predictor(trained_run)
    red = tmp_path / "red.png"
    Image.new("RGB", (40, 24), (220, 30, 30)).save(red)
    prediction = predictor.predict(red, k=3)
    assert [name for name, _ in prediction.top][0] == "red"
    assert sorted(name for name, _ in prediction.top) == sorted(LABELS)
    assert sum(p for _, p in prediction.top) == pytest.approx(1.0, abs=1e-5)
    probabilities = [p for _, p in prediction.top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert len(predictor.predict(red, k=10).top) == 3  # never more than the classes
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="broken.jpg cannot be read"):
        predictor.predict(broken)
    with pytest.raises(DatasetError, match="does not exist"):
        predictor.predict(tmp_path / "missing.png")


# -- the learning-rate finder -------------------------------------------------------------------


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def test_the_sweep_restores_model_and_optimizer_exactly() -> None:
    model = tiny_model()
    head = {"params": list(model[5].parameters()), "lr": 1e-2, "name": "head"}
    body = {"params": [*model[0].parameters(), *model[1].parameters()], "lr": 1e-3,
            "name": "body"}
    optimizer = torch.optim.AdamW([body, head], lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 8, 8, generator=generator), torch.tensor([0, 1, 2, 0]))
               for _ in range(3)]
    model.train()  # one optimizer step first, so there is optimizer state to restore
    nn.functional.cross_entropy(model(batches[0][0]), batches[0][1]).backward()
    optimizer.step()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state_before = {k: {n: t.clone() for n, t in s.items()}
                    for k, s in optimizer.state_dict()["state"].items()}
    result = lr_sweep(model, optimizer, batches, nn.CrossEntropyLoss(), base_lr=1e-2,
                      start_lr=1e-5, end_lr=1.0, steps=30)
    assert len(result.lrs) >= 12
    assert all(a < b for a, b in zip(result.lrs, result.lrs[1:], strict=False))
    assert result.lrs[0] == pytest.approx(1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training, "the model's eval mode is restored"
    after = optimizer.state_dict()
    assert [g["lr"] for g in after["param_groups"]] == [1e-3, 1e-2]
    for key, tensors in state_before.items():
        assert all(torch.equal(t, after["state"][key][n]) for n, t in tensors.items())


def test_the_sweep_scales_groups_together_and_stops_when_asked() -> None:
    model = tiny_model()
    optimizer = torch.optim.SGD([{"params": list(model[5].parameters()), "lr": 0.1},
                                 {"params": list(model[0].parameters()), "lr": 0.01}])
    seen: list[list[float]] = []
    stop = threading.Event()

    def progress(step: int, steps: int, lr: float, loss: float) -> None:
        seen.append([g["lr"] for g in optimizer.param_groups])
        if step == 5:
            stop.set()

    batch = (torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    result = lr_sweep(model, optimizer, [batch], nn.CrossEntropyLoss(), base_lr=0.1,
                      start_lr=1e-4, end_lr=1.0, steps=50, progress=progress, stop=stop)
    assert result.ended == "stopped" and len(result.lrs) == 5
    assert all(head / body == pytest.approx(10.0) for head, body in seen)  # ratio kept
    assert seen[0][0] == pytest.approx(1e-4)


def test_the_suggestion_is_where_the_loss_falls_fastest() -> None:
    lrs = np.logspace(-6, 0, 61)  # ten points a decade
    losses = np.concatenate([np.full(20, 2.0), np.linspace(2.0, 1.8, 10),  # flat, gentle
                             np.linspace(1.8, 0.6, 6)[1:],  # steep, around 1e-3
                             np.linspace(0.6, 0.5, 11)[1:], np.linspace(0.5, 5, 16)])
    suggestion = suggest_lr(lrs, losses)
    assert suggestion is not None and lrs[30] <= suggestion <= lrs[35]
    assert suggest_lr(lrs[:5], losses[:5]) is None  # too short to judge
    assert suggest_lr(lrs, np.linspace(1.0, 3.0, 61)) is None  # never falls


def test_find_lr_on_a_run_config(tiny_dataset: Path) -> None:
    config = RunConfig(
        data=DataConfig(root=str(tiny_dataset), image_size=32, augment="none"),
        model=ModelConfig(backbone="resnet18", weights="none"),
        freeze=FreezeSpec(preset="head_only"),
        optim=OptimConfig(lr=1e-3),
        train=TrainConfig(batch_size=8, workers=0, precision="fp32", device="cpu"))
    result = find_lr(config, steps=15, start_lr=1e-5, end_lr=1.0)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) == 15
    assert result.base_lr == 1e-3 and result.ended == "finished"
    assert result.suggestion is None or 1e-5 <= result.suggestion <= 1.0
