"""`studio train --batch-size auto`: found before training (the run's config.toml records the
number), said in one line; without a CUDA GPU the config's batch size, with a sentence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import studio.engine.batch_finder as batch_finder
from studio.cli import main
from studio.cli.train import _with_batch_size
from studio.engine.batch_finder import BatchSizeFound
from studio.engine.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig

BACKBONE = "mobilenet_v3_small"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def saved_config(tiny_dataset: Path, tmp_path: Path) -> Path:
    config = RunConfig(
        data=DataConfig(root=str(tiny_dataset), image_size=32, augment="none"),
        model=ModelConfig(backbone=BACKBONE, weights="none"),
        optim=OptimConfig(schedule="none"),
        train=TrainConfig(epochs=1, batch_size=12, workers=0, precision="fp32", device="cpu"))
    config.save(tmp_path / "run.toml")
    return tmp_path / "run.toml"


def test_auto_without_a_cuda_gpu_says_so_and_trains_with_the_configs_batch_size(
        tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code = main(["train", "--config", str(saved_config(tiny_dataset, tmp_path)),
                 "--batch-size", "auto", "--out", str(run)])
    err = capsys.readouterr().err

    assert code == 0, err
    assert ("finding the batch size needs a CUDA GPU and this run trains on the CPU; keeping "
            "the configured batch size of 12\n") in err
    assert RunConfig.load(run / "config.toml").train.batch_size == 12


def test_auto_trains_with_the_batch_size_found_and_records_the_number(
        tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []

    def found(config: Any, scan: Any = None, **kwargs: Any) -> BatchSizeFound:
        asked.append(config)
        return BatchSizeFound(16, 18, (), "found", "batch size 16: the largest batch that "
                                                   "trained a step on cuda:0 was 18")

    monkeypatch.setattr(batch_finder, "find_batch_size", found)
    run = tmp_path / "run"
    code = main(["train", "--config", str(saved_config(tiny_dataset, tmp_path)),
                 "--batch-size=auto", "--image-size", "48", "--out", str(run)])
    err = capsys.readouterr().err

    assert code == 0, err
    assert asked[0].data.image_size == 48  # the search sees the other flags
    assert "batch size 16: the largest batch that trained a step on cuda:0 was 18\n" in err
    assert RunConfig.load(run / "config.toml").train.batch_size == 16


def test_a_batch_size_that_is_neither_a_number_nor_auto_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--batch-size", "lots"])
    assert exit_.value.code == 2
    assert "expects a number of images or auto; got 'lots'" in capsys.readouterr().err


def test_the_processes_torchrun_starts_get_the_number_found() -> None:
    assert _with_batch_size(["train", "--batch-size", "auto", "--epochs", "2"], 96) == [
        "train", "--batch-size", "96", "--epochs", "2"]
    assert _with_batch_size(["train", "--batch-size=auto"], 96) == ["train", "--batch-size=96"]
    assert _with_batch_size(["train", "--batch", "auto"], 8) == ["train", "--batch", "8"]
