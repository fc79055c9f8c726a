"""TensorBoard event files in the run folder: read back with TensorBoard's own reader, they hold
what metrics.jsonl holds; switched off, or without the package, a run writes none and still
completes; a writer that cannot write turns itself off without failing the run."""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from studio.cli import main
from studio.engine.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from studio.engine.events import BatchEnded, Callback, FitEnded, Outcome
from studio.engine.runs import epoch_records, read_metrics
from studio.engine.tensorboard import render_confusion_matrix
from studio.engine.trainer import Trainer

TRAIN = ["--backbone", "mobilenet_v3_small", "--weights", "none", "--image-size", "32",
         "--device", "cpu", "--precision", "fp32", "--workers", "0", "--schedule", "none"]


def tiny_config(data: Path, **train: Any) -> RunConfig:
    """As tests/engine/test_disk_errors.py's: 2 CPU epochs of mobilenet_v3_small at 32 px."""
    settings: dict[str, Any] = {"epochs": 2, "batch_size": 8, "workers": 0, "precision": "fp32",
                                "device": "cpu", "image_cache": "off", "feature_cache": "off"}
    settings.update(train)
    return RunConfig(data=DataConfig(root=str(data), image_size=32, augment="light"),
                     model=ModelConfig(backbone="mobilenet_v3_small", weights="none"),
                     optim=OptimConfig(schedule="none"), train=TrainConfig(**settings))


class BatchRecorder(Callback):
    def __init__(self) -> None:
        self.batches: list[BatchEnded] = []

    def on_batch_end(self, event: BatchEnded) -> None:
        self.batches.append(event)


def fit(config: RunConfig, run: Path, *callbacks: Callback) -> FitEnded:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from two busy cores
    try:
        return Trainer(config, run, callbacks).fit()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def board(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished 2-epoch run with its event files loaded by TensorBoard's reader."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path_factory.mktemp("board") / "run"
    recorder = BatchRecorder()
    config = tiny_config(tiny_dataset)
    result = fit(config, run, recorder)
    assert result.outcome is Outcome.COMPLETED, result.message
    events = EventAccumulator(str(run / "tensorboard"),
                              size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return {"run": run, "config": config, "result": result, "batches": recorder.batches,
            "events": events}


def scalars(board: dict[str, Any], tag: str) -> dict[int, float]:
    return {event.step: event.value for event in board["events"].Scalars(tag)}


def test_epoch_figures_are_the_metrics_jsonl_figures(board: dict[str, Any]) -> None:
    epochs = epoch_records(board["run"])
    assert sorted(epochs) == [1, 2]
    for tag, key in (("train/loss", "train_loss"), ("train/acc", "train_acc"),
                     ("val/loss", "val_loss"), ("val/acc", "val_acc"),
                     ("speed/images_per_second", "images_per_second")):
        assert scalars(board, tag) == {e: pytest.approx(r[key], rel=1e-6)
                                       for e, r in epochs.items()}, tag
    groups = epochs[1]["lr"]
    assert groups  # one learning rate a parameter group, under lr/<group>
    for group, lr in groups.items():
        assert scalars(board, f"lr/{group}")[1] == pytest.approx(lr, rel=1e-6)


def test_batch_figures_are_one_per_logging_step(board: dict[str, Any]) -> None:
    batches: list[BatchEnded] = board["batches"]
    loss = board["events"].Scalars("train/loss_batch")
    acc = board["events"].Scalars("train/acc_batch")
    assert [e.step for e in loss] == [b.global_step for b in batches]
    assert [e.value for e in loss] == pytest.approx([b.loss for b in batches], rel=1e-6)
    assert [e.value for e in acc] == pytest.approx([b.accuracy for b in batches], rel=1e-6)
    assert batches[-1].global_step == 2 * batches[-1].steps  # 2 epochs, no accumulation


def test_hparams_hold_the_config_and_the_best_metric(board: dict[str, Any]) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    events, config, result = board["events"], board["config"], board["result"]

    def plugin_data(tag: str) -> Any:
        content = events.SummaryMetadata(tag).plugin_data.content
        return plugin_data_pb2.HParamsPluginData.FromString(content)

    hparams = plugin_data("_hparams_/session_start_info").session_start_info.hparams
    assert hparams["optim.lr"].number_value == pytest.approx(config.optim.lr)
    assert hparams["train.batch_size"].number_value == config.train.batch_size
    assert hparams["model.backbone"].string_value == "mobilenet_v3_small"
    assert hparams["train.channels_last"].string_value == "true"
    metrics = [m.name.tag for m in plugin_data("_hparams_/experiment").experiment.metric_infos]
    assert {"hparam/best_metric", "hparam/best_epoch"} <= set(metrics)
    best = scalars(board, "hparam/best_metric")
    assert list(best.values()) == [pytest.approx(result.best_metric, rel=1e-6)]
    assert list(scalars(board, "hparam/best_epoch").values()) == [result.best_epoch]
    assert [p.name for p in (board["run"] / "tensorboard").iterdir()] == \
        [p.name for p in (board["run"] / "tensorboard").glob("events.out.tfevents.*")]


def test_the_confusion_matrix_is_the_best_checkpoints(board: dict[str, Any]) -> None:
    events, result = board["events"], board["result"]
    labels = ["blue", "green", "red"]
    (image,) = events.Images("val/confusion_matrix")
    assert image.step == result.best_epoch
    (text,) = events.Tensors("val/confusion_matrix/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    rows = [line for line in table.splitlines()[2:]]
    matrix = np.array([[int(n) for n in re.findall(r"\| (\d+)", row)] for row in rows])
    assert [row.split("|")[1].strip() for row in rows] == labels
    best = epoch_records(board["run"])[result.best_epoch]
    assert matrix.sum() == best["val_images"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(best["val_acc"])
    drawn = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
    assert (image.height, image.width) == drawn.shape[:2]
    assert np.array_equal(drawn, render_confusion_matrix(matrix, labels))
    # the size follows the classes and their names, not the counts
    assert render_confusion_matrix(np.zeros((3, 3), int), labels).shape == drawn.shape
    assert render_confusion_matrix(np.eye(12, dtype=int), [f"c{i}" for i in range(12)]
                                   ).shape[1] > drawn.shape[1]


def test_no_tensorboard_writes_no_event_files(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["train", "--data", str(tiny_dataset), "--out", str(run), "--epochs", "1",
                     "--no-tensorboard", *TRAIN])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert RunConfig.load(run / "config.toml").train.tensorboard is False
    assert (run / "checkpoints" / "best.pt").is_file()
    assert not (run / "tensorboard").exists()


def test_without_the_package_a_run_completes_and_writes_none(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    caplog.set_level(logging.INFO, logger="studio")
    result = fit(tiny_config(tiny_dataset, epochs=1), tmp_path / "run")
    assert result.outcome is Outcome.COMPLETED, result.message
    assert not (tmp_path / "run" / "tensorboard").exists()
    said = [r for r in caplog.records if "tensorboard package is not installed" in r.message]
    assert [r.levelno for r in said] == [logging.INFO]  # quietly, once


def test_a_writer_that_cannot_write_turns_itself_off(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    calls: list[str] = []

    def full_disk(self: Any, tag: str, *args: Any, **kwargs: Any) -> None:
        calls.append(tag)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(SummaryWriter, "add_scalar", full_disk)
    caplog.set_level(logging.INFO, logger="studio")
    run = tmp_path / "run"
    result = fit(tiny_config(tiny_dataset), run)
    assert result.outcome is Outcome.COMPLETED, result.message
    assert calls == ["train/loss_batch"]  # the first write failed; none was tried after it
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "off for the rest of this run" in warnings[0] and "the disk is full" in warnings[0]
    assert [r["event"] for r in read_metrics(run)].count("epoch") == 2  # the record is whole
