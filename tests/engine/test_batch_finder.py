"""Find batch size: the search (doubling, then bisecting) over an injected probe, the margin,
the one sentence without a CUDA GPU, and the real trial step on the CPU with memory running out
on purpose above a chosen batch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import studio.engine.batch_finder as batch_finder
import studio.engine.parts as parts_module
from studio.engine.batch_finder import (
    BatchTrial,
    find_batch_size,
    search_batch_size,
    with_margin,
)
from studio.engine.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig

BACKBONE = "mobilenet_v3_small"
TRAIN_IMAGES = 24  # of the tiny dataset, after the default 20 % validation split


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config_for(data: Path, **train: Any) -> RunConfig:
    settings: dict[str, Any] = {"batch_size": 8, "workers": 0, "precision": "fp32",
                                "device": "cpu"}
    settings.update(train)
    return RunConfig(data=DataConfig(root=str(data), image_size=32),
                     model=ModelConfig(backbone=BACKBONE, weights="none"),
                     optim=OptimConfig(schedule="none"), train=TrainConfig(**settings))


@pytest.mark.parametrize("largest", [2, 3, 7, 63, 100, 1000, 5000])
def test_the_search_finds_the_largest_batch_that_fits_within_its_resolution(
        largest: int) -> None:
    search = search_batch_size(lambda batch: batch <= largest, limit=65_536)

    assert search.bounded and not search.stopped and search.largest is not None
    assert largest - (1 if largest < 64 else 8) <= search.largest <= largest
    assert all(t.fits == (t.batch <= largest) for t in search.trials)
    assert len(search.trials) <= 2 * largest.bit_length() + 1  # doubling, then bisecting
    doubled = next(i for i, t in enumerate(search.trials) if not t.fits) + 1
    assert [t.batch for t in search.trials[:doubled]] == [2 ** (k + 1) for k in range(doubled)]


def test_the_search_ends_at_its_limit_or_at_the_first_batch() -> None:
    everything = search_batch_size(lambda batch: True, limit=27)
    assert (everything.largest, everything.bounded) == (27, False)
    assert [t.batch for t in everything.trials] == [2, 4, 8, 16, 27]
    nothing = search_batch_size(lambda batch: False, limit=27)
    assert (nothing.largest, nothing.bounded, len(nothing.trials)) == (None, True, 1)


def test_the_search_answers_stop_between_trials_and_reports_progress() -> None:
    stop = threading.Event()
    seen: list[BatchTrial] = []

    def progress(trial: BatchTrial) -> None:
        seen.append(trial)
        if len(seen) == 3:
            stop.set()

    search = search_batch_size(lambda batch: True, limit=1000, stop=stop, progress=progress)
    assert search.stopped and search.largest == 8 and [t.batch for t in seen] == [2, 4, 8]


@pytest.mark.parametrize("largest,batch", [(100, 88), (20, 16), (17, 15), (10, 9), (1, 1)])
def test_the_margin_is_ten_percent_rounded_down_to_a_multiple_of_eight(largest: int,
                                                                      batch: int) -> None:
    assert with_margin(largest) == batch


def test_without_a_cuda_gpu_it_says_so_and_keeps_the_configured_batch_size(
        tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parts_module, "build_parts", None)  # nothing may be built
    found = find_batch_size(config_for(tiny_dataset, batch_size=12))

    assert (found.batch_size, found.ended, found.trials) == (12, "no_gpu", ())
    assert found.message == ("finding the batch size needs a CUDA GPU and this run trains on the "
                             "CPU; keeping the configured batch size of 12")


@pytest.mark.parametrize("largest,ended,batch", [
    (12, "found", 10), (10**6, "whole_split", TRAIN_IMAGES), (0, "none_fit", 8)])
def test_find_batch_size_answers_with_a_batch_and_a_sentence(
        tiny_dataset: Path, largest: int, ended: str, batch: int) -> None:
    found = find_batch_size(config_for(tiny_dataset), fits=lambda b: b <= largest)

    assert (found.ended, found.batch_size) == (ended, batch), found.message
    assert "\n" not in found.message and found.to_json()["batch_size"] == batch
    if ended == "found":
        assert found.message.startswith("batch size 10: the largest batch that trained a step "
                                        "on cpu was 12, less a 10 % margin (")
    if ended == "whole_split":
        assert max(t.batch for t in found.trials) == 27  # the split and room for the margin
    if ended == "none_fit":
        assert found.message.startswith("not even a batch of 2 fits: mobilenet_v3_small at 32 "
                                        "px in fp32 does not train on cpu; keeping the "
                                        "configured batch size of 8 — try a smaller image size")


def test_the_trial_step_trains_the_run_model_until_memory_runs_out(
        tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = parts_module.build_model
    steps: list[int] = []

    def build(config: Any, classes: int, size: int) -> Any:
        built = real(config, classes, size)

        def tight(module: nn.Module, args: tuple[torch.Tensor]) -> None:
            assert module.training and args[0].shape[1:] == (3, 32, 32)
            assert args[0].is_contiguous(memory_format=torch.channels_last)
            if args[0].shape[0] > 10:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            steps.append(args[0].shape[0])

        built.model.register_forward_pre_hook(tight)
        return built

    monkeypatch.setattr(parts_module, "build_model", build)
    monkeypatch.setattr(batch_finder, "SEARCHES_ON", ("cuda", "cpu"))
    found = find_batch_size(config_for(tiny_dataset))

    assert [(t.batch, t.fits) for t in found.trials] == [
        (2, True), (4, True), (8, True), (16, False), (12, False), (10, True), (11, False)]
    assert (found.ended, found.largest, found.batch_size) == ("found", 10, 9)
    assert steps == [2, 2, 4, 8, 10]  # the first trial twice: the optimizer's state is in memory
