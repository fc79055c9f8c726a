"""The training loop as a user meets it: events, the run folder, freezing, stages, stop and
pause, NaN, resume, atomic checkpoints, early stopping, seeds, options and one-sentence errors.

Every fit runs ``mobilenet_v3_small`` (the fastest torchvision net with BatchNorm at 32 px on
CPU, measured against resnet18 and squeezenet1_1) on 3 classes × 10 images of 16 pixels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import studio.engine.parts as parts_module
from studio.engine.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from studio.engine.config import (
    DataConfig,
    FreezeSpec,
    ModelConfig,
    OptimConfig,
    ParamGroupSpec,
    RunConfig,
    StageSpec,
    TrainConfig,
)
from studio.engine.errors import StudioError
from studio.engine.events import (
    BatchEnded,
    Callback,
    CheckpointSaved,
    EpochEnded,
    FitEnded,
    FitStarted,
    Outcome,
    StageStarted,
    WarningIssued,
)
from studio.engine.optim import lr_factor
from studio.engine.trainer import Trainer

BACKBONE = "mobilenet_v3_small"
HEAD = "classifier.3"
LAST_BLOCK = "features.12"  # conv + BatchNorm just before pooling
EARLY_BLOCKS = ("features.0", "features.1")
TRAIN_IMAGES = 24  # 8 per class after the default 20 % validation split
WAIT = 120  # seconds: a bound on waits for conditions, never a sleep

EPOCH_KEYS = {"event", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
              "images_per_second"}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op thread: a tiny model gains nothing from two, and on a busy two-core machine
    OpenMP's spinning threads made a fit 5–20× slower. Deterministic runs switch torch's global
    determinism on; restore it so that it does not leak into other tests."""
    threads = torch.get_num_threads()
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.fixture(autouse=True)
def _torch_settings() -> Iterator[None]:
    with _one_thread():
        yield


def make_config(data: Path | str, *, epochs: int = 2, batch_size: int = 8,
                freeze: FreezeSpec | None = None, stages: tuple[StageSpec, ...] = (),
                optim: OptimConfig | None = None, data_options: dict[str, Any] | None = None,
                **train: Any) -> RunConfig:
    """A tiny, deterministic CPU run; keyword arguments go to TrainConfig."""
    settings: dict[str, Any] = {"epochs": epochs, "batch_size": batch_size, "workers": 0,
                                "precision": "fp32", "device": "cpu", "deterministic": True}
    settings.update(train)
    return RunConfig(
        data=DataConfig(root=str(data), image_size=32, augment="light", **(data_options or {})),
        model=ModelConfig(backbone=BACKBONE, weights="none"),
        freeze=freeze or FreezeSpec(),
        optim=optim or OptimConfig(schedule="none"),
        stages=stages,
        train=TrainConfig(**settings))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Watch(Callback):
    """Records every event, counts training forwards of the trainer's model and snapshots its
    state at fit start and after every epoch."""

    def __init__(self, trainer: Trainer,
                 on_train_forward: Callable[[int], None] | None = None) -> None:
        self.trainer = trainer
        self.events: list[tuple[str, Any]] = []
        self.train_forwards = 0
        self.on_train_forward = on_train_forward
        self.initial: dict[str, torch.Tensor] = {}
        self.after_epoch: dict[int, dict[str, torch.Tensor]] = {}
        trainer.callbacks.append(self)

    def _forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if module.training:
            self.train_forwards += 1
            if self.on_train_forward is not None:
                self.on_train_forward(self.train_forwards)

    def of(self, kind: str) -> list[Any]:
        return [event for name, event in self.events if name == kind]

    def on_fit_start(self, event: FitStarted) -> None:
        self.events.append(("fit_start", event))
        self.trainer.model.register_forward_hook(self._forward)
        self.initial = snapshot(self.trainer.model)

    def on_stage_start(self, event: StageStarted) -> None:
        self.events.append(("stage_start", event))

    def on_batch_end(self, event: BatchEnded) -> None:
        self.events.append(("batch_end", event))

    def on_epoch_end(self, event: EpochEnded) -> None:
        self.events.append(("epoch_end", event))
        self.after_epoch[event.epoch] = snapshot(self.trainer.model)

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        self.events.append(("checkpoint", event))

    def on_warning(self, event: WarningIssued) -> None:
        self.events.append(("warning", event))

    def on_fit_end(self, event: FitEnded) -> None:
        self.events.append(("fit_end", event))


def fit(config: RunConfig, run_dir: Path, **kwargs: Any) -> tuple[FitEnded, Watch]:
    trainer = Trainer(config, run_dir)
    watch = Watch(trainer)
    return trainer.fit(**kwargs), watch


@pytest.fixture(scope="module")
def completed_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run, trained once; tests that change it work on a copy."""
    run = tmp_path_factory.mktemp("completed") / "run"
    with _one_thread():
        result, _ = fit(make_config(tiny_dataset, epochs=1), run)
    assert result.outcome is Outcome.COMPLETED, result.message
    return run


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def epoch_lines(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in records(run_dir) if r["event"] == "epoch"]


def curve(run_dir: Path) -> list[tuple[Any, ...]]:
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")
    return [tuple(line[k] for k in keys) for line in epoch_lines(run_dir)]


def under(name: str, *modules: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def param_names(run_dir: Path) -> list[str]:
    model = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    return [n for n in model if not n.endswith(("running_mean", "running_var", "_tracked"))]


# ---------------------------------------------------------------------------------------------
# Events


def assert_plain(value: Any, where: str) -> None:
    """Plain Python values all the way down: no tensors, no numpy scalars, no objects."""
    if type(value) in (bool, int, float, str, type(None)) or isinstance(value, Outcome):
        return
    if isinstance(value, tuple | list):
        for i, item in enumerate(value):
            assert_plain(item, f"{where}[{i}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            assert type(key) is str, f"{where} has a key of type {type(key).__name__}"
            assert_plain(item, f"{where}[{key!r}]")
        return
    raise AssertionError(f"{where} is a {type(value).__module__}.{type(value).__name__}")


def test_events_arrive_in_order_as_frozen_plain_facts(tiny_dataset: Path,
                                                      tmp_path: Path) -> None:
    result, watch = fit(make_config(tiny_dataset, epochs=2), tmp_path / "run")

    assert result.outcome is Outcome.COMPLETED and result.epochs_completed == 2
    kinds = [name for name, _ in watch.events if name != "checkpoint"]
    collapsed = [k for i, k in enumerate(kinds) if k != "batch_end" or kinds[i - 1] != k]
    assert collapsed == ["fit_start", "stage_start", *["batch_end", "epoch_end"] * 2, "fit_end"]
    # checkpoints are written on their own thread: each is told once it is on disk, after its
    # epoch ended and before the fit ends
    order = [(name, getattr(event, "epoch", None)) for name, event in watch.events]
    for index, (name, epoch) in enumerate(order):
        if name == "checkpoint":
            assert ("epoch_end", epoch) in order[:index] and ("fit_end", None) in order[index:]
    saved = {epoch: [e.kind for e in watch.of("checkpoint") if e.epoch == epoch]
             for epoch in (1, 2)}
    assert saved[1] == ["last", "best"]  # the first epoch is the best so far
    assert saved[2] in (["last"], ["last", "best"])
    started = watch.of("fit_start")[0]
    assert (started.start_epoch, started.epochs, started.steps_per_epoch) == (1, 2, 3)
    assert started.train_images == TRAIN_IMAGES and started.val_images == 6
    assert [e.epoch for e in watch.of("epoch_end")] == [1, 2]
    for epoch in (1, 2):  # the last batch of an epoch is always reported
        steps = [e.step for e in watch.of("batch_end") if e.epoch == epoch]
        assert steps == sorted(steps) and steps[-1] == 3
    assert [e.is_best for e in watch.of("epoch_end")] == [kinds == ["last", "best"]
                                                          for kinds in saved.values()]
    assert watch.of("fit_end") == [result]

    for name, event in watch.events:
        cls = type(event)
        assert dataclasses.is_dataclass(event) and cls.__dataclass_params__.frozen, name
        assert hasattr(cls, "__slots__"), f"{cls.__name__} is not slotted"
        field = dataclasses.fields(event)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, field, getattr(event, field))
        for f in dataclasses.fields(event):
            assert_plain(getattr(event, f.name), f"{cls.__name__}.{f.name}")
    for event in watch.of("batch_end"):
        assert math.isfinite(event.loss) and 0.0 <= event.accuracy <= 1.0
        assert set(event.lr) == {"default"} and event.images_per_second > 0


# ---------------------------------------------------------------------------------------------
# The run directory


def test_run_folder_holds_config_labels_metrics_and_checkpoints(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny_dataset.parent)
    groups = (ParamGroupSpec("head", (HEAD,), lr=2e-3),)
    config = make_config("data", epochs=2, optim=OptimConfig(schedule="cosine", groups=groups),
                         stages=(StageSpec(epoch=2, lr_scale={"*": 0.5}),))
    run = tmp_path / "run"
    result, watch = fit(config, run)
    assert result.outcome is Outcome.COMPLETED

    saved = RunConfig.load(run / "config.toml")
    absolute = str(tiny_dataset.resolve())
    assert saved.data.root == absolute
    assert saved == config.replace(data=dataclasses.replace(config.data, root=absolute))

    labels = json.loads((run / "labels.json").read_text(encoding="utf-8"))
    assert labels == ["blue", "green", "red"] == list(watch.of("fit_start")[0].classes)

    lines = epoch_lines(run)
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        assert EPOCH_KEYS <= set(line), f"missing {EPOCH_KEYS - set(line)}"
        for key in ("train_loss", "val_loss", "seconds", "images_per_second"):
            assert isinstance(line[key], float) and line[key] >= 0, key
        for key in ("train_acc", "val_acc"):
            assert 0.0 <= line[key] <= 1.0, key
        assert set(line["lr"]) == {"head", "default"}
        assert all(isinstance(v, float) for v in line["lr"].values())
    assert lines[0]["lr"]["head"] > lines[1]["lr"]["head"] > 0  # cosine, then the stage's ×0.5
    kinds = [r["event"] for r in records(run)]
    assert kinds[0] == "fit_start" and kinds[-1] == "fit_end"
    assert records(run)[-1]["outcome"] == "completed"

    for name in ("last.pt", "best.pt"):
        payload = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert payload["format"] == FORMAT and payload["labels"] == labels
        assert payload["backbone"] == BACKBONE and payload["head"] == HEAD
        assert set(payload["model"]) == set(watch.initial)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2


def test_checkpoints_get_the_same_permissions_as_the_other_run_files(completed_run: Path) -> None:
    run = completed_run
    modes = {path.name: path.stat().st_mode & 0o777
             for path in (run / "config.toml", run / "labels.json", run / "metrics.jsonl",
                          run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt")}
    assert len(set(modes.values())) == 1, {name: oct(mode) for name, mode in modes.items()}


# ---------------------------------------------------------------------------------------------
# Freezing and learning rate 0


@pytest.mark.parametrize("bn_frozen", [True, False])
def test_frozen_parameters_stay_bit_for_bit_and_so_do_their_batchnorm_statistics(
        tiny_dataset: Path, tmp_path: Path, bn_frozen: bool) -> None:
    optim = OptimConfig(optimizer="adamw", weight_decay=0.05, schedule="none")
    freeze = FreezeSpec(preset="head_only", bn_frozen=bn_frozen)
    run = tmp_path / "run"
    result, watch = fit(make_config(tiny_dataset, freeze=freeze, optim=optim), run)
    assert result.outcome is Outcome.COMPLETED

    final = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    frozen = [n for n in param_names(run) if not under(n, HEAD)]
    changed = [n for n in frozen if not torch.equal(final[n], watch.initial[n])]
    assert changed == [], f"frozen parameters changed: {changed[:5]}"
    head = f"{HEAD}.weight"
    assert not torch.equal(final[head], watch.initial[head])
    assert watch.of("fit_start")[0].trainable_params == sum(
        final[n].numel() for n in (head, f"{HEAD}.bias"))
    statistics = [n for n in final if n.endswith(("running_mean", "running_var"))]
    moved = [n for n in statistics if not torch.equal(final[n], watch.initial[n])]
    if bn_frozen:  # the default: frozen BatchNorm layers keep their statistics
        assert moved == [], f"statistics of frozen BatchNorm layers changed: {moved[:5]}"
    else:
        assert len(moved) == len(statistics)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_a_group_with_learning_rate_zero_stays_bit_for_bit(tiny_dataset: Path, tmp_path: Path,
                                                           optimizer: str) -> None:
    groups = (ParamGroupSpec("early", EARLY_BLOCKS, lr=0.0),)
    optim = OptimConfig(optimizer=optimizer, weight_decay=0.1, groups=groups, schedule="cosine",
                        warmup_epochs=0.5)
    run = tmp_path / "run"
    result, watch = fit(make_config(tiny_dataset, optim=optim), run)
    assert result.outcome is Outcome.COMPLETED

    final = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    early = [n for n in param_names(run) if under(n, *EARLY_BLOCKS)]
    assert early and all(torch.equal(final[n], watch.initial[n]) for n in early)
    for trained in ("features.2.block.0.0.weight", f"{LAST_BLOCK}.0.weight", f"{HEAD}.weight"):
        assert not torch.equal(final[trained], watch.initial[trained]), trained
    assert {line["lr"]["early"] for line in epoch_lines(run)} == {0.0}


# ---------------------------------------------------------------------------------------------
# Progressive unfreezing


def test_a_stage_unfreezes_the_last_block_and_keeps_the_heads_optimizer_state(
        tiny_dataset: Path, tmp_path: Path) -> None:
    stage = StageSpec(epoch=2, freeze=FreezeSpec(preset="head_only", unfreeze=(LAST_BLOCK,)))
    config = make_config(tiny_dataset, epochs=2, freeze=FreezeSpec(preset="head_only"),
                         stages=(stage,), optim=OptimConfig(optimizer="adamw", schedule="none"))
    run = tmp_path / "run"
    result, watch = fit(config, run)
    assert result.outcome is Outcome.COMPLETED

    stages = watch.of("stage_start")
    assert [(s.epoch, s.index) for s in stages] == [(1, 0), (2, 1)]
    assert stages[1].trainable_params > stages[0].trainable_params
    kinds = [(name, getattr(event, "epoch", None)) for name, event in watch.events]
    assert kinds.index(("epoch_end", 1)) < kinds.index(("stage_start", 2)) \
        < kinds.index(("batch_end", 2))

    block = [n for n in watch.initial if under(n, LAST_BLOCK)]
    weight, stats = f"{LAST_BLOCK}.0.weight", f"{LAST_BLOCK}.1.running_mean"
    assert {weight, stats} <= set(block)
    for name in block:  # frozen during epoch 1, BatchNorm statistics included
        assert torch.equal(watch.after_epoch[1][name], watch.initial[name]), name
    for name in (weight, stats):  # trained in epoch 2
        assert not torch.equal(watch.after_epoch[2][name], watch.after_epoch[1][name]), name
    head = f"{HEAD}.weight"
    assert not torch.equal(watch.after_epoch[1][head], watch.initial[head])

    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    state = checkpoint["optimizer"]["state"]
    assert {head, weight} <= set(state)  # keyed by parameter name
    steps = checkpoint["global_step"]
    assert steps == 6
    assert float(state[head]["step"]) == steps  # not reset when the stage began
    assert float(state[weight]["step"]) == steps // 2  # joined at epoch 2
    assert not any(under(n, "features.11") for n in state)


# ---------------------------------------------------------------------------------------------
# Stop and pause


class StopOnFirstBatchEnd(Callback):
    def __init__(self, stop: threading.Event, watch: Watch) -> None:
        self.stop, self.watch = stop, watch
        self.forwards_at_stop = -1

    def on_batch_end(self, event: BatchEnded) -> None:
        if not self.stop.is_set():
            self.stop.set()
            self.forwards_at_stop = self.watch.train_forwards


def test_stop_set_by_a_callback_ends_the_fit_within_one_batch(tiny_dataset: Path,
                                                              tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = Trainer(make_config(tiny_dataset, epochs=3, batch_size=4), run)
    watch = Watch(trainer)
    stop = threading.Event()
    stopper = StopOnFirstBatchEnd(stop, watch)
    trainer.callbacks.append(stopper)

    result = trainer.fit(stop)

    assert result.outcome is Outcome.CANCELLED
    assert stopper.forwards_at_stop >= 1
    assert watch.train_forwards - stopper.forwards_at_stop <= 1
    assert "epoch 1" in result.message and "nothing to resume" in result.message
    assert not (run / "checkpoints" / "last.pt").exists()
    assert records(run)[-1]["outcome"] == "cancelled"


def test_stop_from_another_thread_ends_a_running_fit_within_one_batch(
        tiny_dataset: Path, tmp_path: Path) -> None:
    trainer = Trainer(make_config(tiny_dataset, epochs=50, batch_size=4), tmp_path / "run")
    training = threading.Event()
    watch = Watch(trainer, on_train_forward=lambda count: training.set())
    stop = threading.Event()
    results: list[FitEnded] = []
    worker = threading.Thread(target=lambda: results.append(trainer.fit(stop)), daemon=True)
    worker.start()

    assert training.wait(WAIT)
    stop.set()
    forwards_at_stop = watch.train_forwards
    worker.join(WAIT)

    assert not worker.is_alive() and results[0].outcome is Outcome.CANCELLED
    assert watch.train_forwards - forwards_at_stop <= 1


@pytest.mark.parametrize("then", ["clear_pause", "stop"])
def test_pause_holds_the_loop_until_cleared_or_stopped(tiny_dataset: Path, tmp_path: Path,
                                                       then: str) -> None:
    trainer = Trainer(make_config(tiny_dataset, epochs=2, batch_size=4), tmp_path / "run")
    pause, stop, paused = threading.Event(), threading.Event(), threading.Event()
    forwards_while_paused: list[int] = []

    def on_train_forward(count: int) -> None:
        if pause.is_set():
            forwards_while_paused.append(count)

    class PauseOnFirstBatchEnd(Callback):
        def on_batch_end(self, event: BatchEnded) -> None:
            if not paused.is_set():
                pause.set()
                paused.set()

    Watch(trainer, on_train_forward)
    trainer.callbacks.append(PauseOnFirstBatchEnd())
    results: list[FitEnded] = []
    worker = threading.Thread(target=lambda: results.append(trainer.fit(stop, pause)),
                              daemon=True)
    worker.start()

    assert paused.wait(WAIT)
    worker.join(0.3)  # a bounded wait on the thread, not a sleep: it must still be held
    assert worker.is_alive() and not results
    if then == "clear_pause":
        pause.clear()
    else:
        stop.set()
    worker.join(WAIT)

    assert not worker.is_alive()
    assert forwards_while_paused == []
    expected = Outcome.COMPLETED if then == "clear_pause" else Outcome.CANCELLED
    assert results[0].outcome is expected


# ---------------------------------------------------------------------------------------------
# A loss that is not finite


class NaNAfter(nn.Module):
    """Cross-entropy for the first ``good`` training batches, NaN after."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good, self.calls = good, 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = F.cross_entropy(logits, target)
        return loss * float("nan") if self.calls > self.good else loss


@pytest.mark.parametrize("good_batches,epoch", [(1, 1), (4, 2)])
def test_a_nan_loss_fails_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        good_batches: int, epoch: int) -> None:
    monkeypatch.setattr(parts_module, "make_criterion", lambda train, weights:
                        NaNAfter(good_batches))
    run = tmp_path / "run"
    result, watch = fit(make_config(tiny_dataset, epochs=3), run)  # 3 batches an epoch

    assert result.outcome is Outcome.FAILED
    assert f"epoch {epoch}" in result.message and re.search(r"\bsteps? \d", result.message)
    assert "last good checkpoint is kept" in result.message and "\n" not in result.message
    assert result.epochs_completed == epoch - 1
    assert records(run)[-1]["outcome"] == "failed"
    last = run / "checkpoints" / "last.pt"
    if epoch == 1:
        assert not last.exists()
        return
    checkpoint = load_checkpoint(last)
    assert checkpoint["epoch"] == 1 and [line["epoch"] for line in epoch_lines(run)] == [1]
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values()
               if t.is_floating_point())
    assert torch.load(last, weights_only=True)["epoch"] == 1


# ---------------------------------------------------------------------------------------------
# Resume


def test_resume_continues_with_the_next_epoch_exactly_like_an_unbroken_run(
        tiny_dataset: Path, tmp_path: Path) -> None:
    # Schedule "none": a cosine schedule's length depends on the epoch count, which the resume
    # below changes from 2 to 3, so only a flat schedule can match the unbroken 3-epoch run.
    full, _ = fit(make_config(tiny_dataset, epochs=3), tmp_path / "full")
    first, _ = fit(make_config(tiny_dataset, epochs=2), tmp_path / "run")
    assert full.outcome is first.outcome is Outcome.COMPLETED

    trainer = Trainer.resume_run(tmp_path / "run", epochs=3)
    watch = Watch(trainer)
    result = trainer.fit()

    assert result.outcome is Outcome.COMPLETED and result.epochs_completed == 3
    assert watch.of("fit_start")[0].start_epoch == 3
    assert [e.epoch for e in watch.of("epoch_end")] == [3]
    assert [line["epoch"] for line in epoch_lines(tmp_path / "run")] == [1, 2, 3]
    # deterministic, fp32, workers 0, flat schedule: the resumed curve is exactly the same
    assert curve(tmp_path / "run") == curve(tmp_path / "full")
    resumed = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    unbroken = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(resumed[k], unbroken[k]) for k in unbroken)


def test_a_run_cancelled_mid_epoch_resumes_that_epoch_and_matches_an_unbroken_run(
        tiny_dataset: Path, tmp_path: Path) -> None:
    optim = OptimConfig(schedule="cosine", warmup_epochs=0.5)  # the schedule position resumes
    config = make_config(tiny_dataset, epochs=3, optim=optim)
    fit(config, tmp_path / "full")
    trainer = Trainer(config, tmp_path / "run")
    stop = threading.Event()
    Watch(trainer, on_train_forward=lambda count: count == 5 and stop.set())  # epoch 2, step 2
    cancelled = trainer.fit(stop)
    assert cancelled.outcome is Outcome.CANCELLED and cancelled.epochs_completed == 1
    assert "resumes from epoch 2" in cancelled.message
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 1

    resumed = Trainer.resume_run(tmp_path / "run")
    watch = Watch(resumed)
    result = resumed.fit()

    assert result.outcome is Outcome.COMPLETED
    assert watch.of("fit_start")[0].start_epoch == 2
    assert [line["epoch"] for line in epoch_lines(tmp_path / "run")] == [1, 2, 3]
    assert curve(tmp_path / "run") == curve(tmp_path / "full")


def test_resume_across_stages_matches_an_unbroken_run(tiny_dataset: Path,
                                                        tmp_path: Path) -> None:
    """Stage 1 adds the last block in its own group, stage 2 adds the first block in another;
    the resumed fit starts inside stage 1 and enters stage 2 itself."""
    groups = (ParamGroupSpec("block", (LAST_BLOCK,), lr=2e-3),
              ParamGroupSpec("early", ("features.0",), lr=1e-4))
    stages = (StageSpec(epoch=2, freeze=FreezeSpec(preset="head_only", unfreeze=(LAST_BLOCK,))),
              StageSpec(epoch=3, freeze=FreezeSpec(preset="head_only",
                                                   unfreeze=(LAST_BLOCK, "features.0")),
                        lr_scale={"block": 0.5}))

    def config(epochs: int) -> RunConfig:
        return make_config(tiny_dataset, epochs=epochs, freeze=FreezeSpec(preset="head_only"),
                           stages=stages, optim=OptimConfig(schedule="none", groups=groups))

    _, unbroken = fit(config(3), tmp_path / "full")
    fit(config(2), tmp_path / "run")
    trainer = Trainer.resume_run(tmp_path / "run", epochs=3)
    watch = Watch(trainer)
    result = trainer.fit()

    assert result.outcome is Outcome.COMPLETED
    assert [(s.epoch, s.index) for s in watch.of("stage_start")] == [(3, 2)]
    assert [e.lr for e in unbroken.of("epoch_end")] == [
        {"default": 1e-3}, {"default": 1e-3, "block": 2e-3},
        {"default": 1e-3, "block": 1e-3, "early": 1e-4}]
    assert watch.of("epoch_end")[0].lr == unbroken.of("epoch_end")[2].lr
    assert curve(tmp_path / "run") == curve(tmp_path / "full")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["optimizer"]["state"]
    assert float(state[f"{LAST_BLOCK}.0.weight"]["step"]) == 6  # epochs 2 and 3, 3 steps each
    assert float(state["features.0.0.weight"]["step"]) == 3


def test_resume_with_a_changed_dataset_fails_with_advice(
        tmp_path: Path, make_tiny_dataset: Callable[[Path], Path]) -> None:
    data = make_tiny_dataset(tmp_path / "data")
    fit(make_config(data, epochs=1), tmp_path / "run")
    (data / "yellow").mkdir()
    for png in sorted((data / "red").iterdir()):
        (data / "yellow" / png.name).write_bytes(png.read_bytes())

    result = Trainer.resume_run(tmp_path / "run", epochs=2).fit()

    assert result.outcome is Outcome.FAILED
    assert "differ from the run's" in result.message and "same dataset" in result.message


class Planted:
    """Unpickling this would create a folder: proof that a checkpoint ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _garbage(last: Path, marker: Path) -> None:
    last.write_bytes(bytes(random.Random(1).randrange(256) for _ in range(4096)))


def _truncated(last: Path, marker: Path) -> None:
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])


def _foreign(last: Path, marker: Path) -> None:
    torch.save(nn.Linear(4, 2).state_dict(), last)  # a plain state dict, not one of ours


def _carries_code(last: Path, marker: Path) -> None:
    payload = torch.load(last, weights_only=True)
    payload["extra"] = Planted(marker)
    torch.save(payload, last)


@pytest.mark.parametrize("spoil,message", [
    (_garbage, "damaged or not a Finetune Studio checkpoint"),
    (_truncated, "damaged or not a Finetune Studio checkpoint"),
    (_foreign, "not a Finetune Studio checkpoint"),
    (_carries_code, "damaged or not a Finetune Studio checkpoint"),
])
def test_resume_refuses_a_corrupt_foreign_or_code_carrying_checkpoint(
        completed_run: Path, tmp_path: Path, spoil: Callable[[Path, Path], None],
        message: str) -> None:
    run = copy_run(completed_run, tmp_path / "run")
    last, marker = run / "checkpoints" / "last.pt", tmp_path / "code-ran"
    spoil(last, marker)

    result = Trainer.resume_run(run, epochs=2).fit()

    assert result.outcome is Outcome.FAILED
    assert message in result.message and str(last) in result.message
    assert "\n" not in result.message and "unexpectedly" not in result.message
    assert not marker.exists(), "loading the checkpoint ran code"
    with pytest.raises(CheckpointError):
        load_checkpoint(last)


def test_resume_of_a_folder_that_is_not_a_run_is_a_studio_error(tmp_path: Path) -> None:
    with pytest.raises(StudioError, match="is not a run folder"):
        Trainer.resume_run(tmp_path)


# ---------------------------------------------------------------------------------------------
# Atomic checkpoints


_SAVER = textwrap.dedent("""
    import itertools, os, sys
    import torch
    from studio.engine.checkpoint import save_checkpoint

    path, mode = sys.argv[1], sys.argv[2]
    big = torch.zeros(4_000_000)  # 16 MB: a write takes a while
    real_fsync = os.fsync
    saves = 0

    def fsync_then_hang(fd):
        real_fsync(fd)
        if mode == "hang" and saves == 1:  # the second save, its temp file written, not moved
            print("in-flight", flush=True)
            sys.stdin.read()

    os.fsync = fsync_then_hang
    for i in itertools.count(1):
        big[0] = big[-1] = i
        save_checkpoint(path, {"counter": i, "big": big})
        saves = i
        print(i, flush=True)
""")


def _lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """A queue of the process's stdout lines (a reader thread: pipes cannot time out)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


@pytest.mark.parametrize("mode", ["loop", "hang"])
def test_a_checkpoint_survives_a_kill_mid_write(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path), mode], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        lines = _lines_of(proc)
        acknowledged = int(lines.get(timeout=WAIT))  # the first save has completed
        if mode == "loop":  # kill somewhere in the middle of a later save
            for _ in range(random.Random(os.getpid()).randint(0, 2)):
                acknowledged = int(lines.get(timeout=WAIT))
        else:
            assert lines.get(timeout=WAIT) == "in-flight"
            temps = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
            assert len(temps) == 1 and temps[0].stat().st_size > 16_000_000
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT)

    payload = load_checkpoint(path)
    assert payload["counter"] >= acknowledged
    big = payload["big"]
    assert big.shape == (4_000_000,) and big[0] == big[-1] == payload["counter"]
    if mode == "hang":
        assert payload["counter"] == 1


def test_save_checkpoint_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ---------------------------------------------------------------------------------------------
# Early stopping and seeds


def test_early_stopping_ends_the_run_before_its_last_epoch(tiny_dataset: Path,
                                                          tmp_path: Path) -> None:
    # A head-only run at a learning rate of 1e-9: validation accuracy cannot improve.
    config = make_config(tiny_dataset, epochs=4, early_stopping=1, monitor="val_acc",
                         freeze=FreezeSpec(preset="head_only"),
                         optim=OptimConfig(lr=1e-9, schedule="none"))
    run = tmp_path / "run"
    result, watch = fit(config, run)

    assert result.outcome is Outcome.EARLY_STOPPED
    assert result.epochs_completed == 2 and result.best_epoch == 1
    assert "val_acc" in result.message and "epoch 2" in result.message
    assert [line["epoch"] for line in epoch_lines(run)] == [1, 2]
    assert [e.kind for e in watch.of("checkpoint")] == ["last", "best", "last"]


def test_an_epoch_whose_validation_loss_is_nan_is_not_the_best(tiny_dataset: Path,
                                                               tmp_path: Path) -> None:
    # From epoch 2 the model's eval-mode outputs are NaN (as with BatchNorm statistics that
    # overflowed) while the training loss stays finite.
    run = tmp_path / "run"
    trainer = Trainer(make_config(tiny_dataset, epochs=2, monitor="val_loss"), run)
    watch = Watch(trainer)

    class BreakEvalAfterEpoch1(Callback):
        def on_epoch_end(self, event: EpochEnded) -> None:
            trainer.model.register_forward_hook(
                lambda module, args, output: output if module.training else output * math.nan)

    trainer.callbacks.append(BreakEvalAfterEpoch1())
    result = trainer.fit()

    assert epoch_lines(run)[1]["val_loss"] is None  # NaN, written as null
    assert result.best_epoch == 1 and not watch.of("epoch_end")[1].is_best
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 1


def test_runs_with_the_same_seed_give_the_same_curve(tiny_dataset: Path, tmp_path: Path) -> None:
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        result, _ = fit(make_config(tiny_dataset, epochs=2, seed=seed), tmp_path / name)
        assert result.outcome is Outcome.COMPLETED
    assert curve(tmp_path / "a") == curve(tmp_path / "b")
    assert curve(tmp_path / "a") != curve(tmp_path / "c")


def test_a_deterministic_run_does_not_leave_determinism_on_for_the_next(
        tiny_dataset: Path, tmp_path: Path) -> None:
    fit(make_config(tiny_dataset, epochs=1, deterministic=True), tmp_path / "a")
    result, _ = fit(make_config(tiny_dataset, epochs=1, deterministic=False), tmp_path / "b")
    assert result.outcome is Outcome.COMPLETED
    assert not torch.are_deterministic_algorithms_enabled()


# ---------------------------------------------------------------------------------------------
# Optimizers, schedules, losses and options


@pytest.mark.parametrize("schedule", ["none", "step", "cosine", "onecycle"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_runs_with_every_schedule(tiny_dataset: Path, tmp_path: Path,
                                                 optimizer: str, schedule: str) -> None:
    optim = OptimConfig(optimizer=optimizer, schedule=schedule, lr=0.01,
                        nesterov=optimizer == "sgd", step_size=1, gamma=0.5)
    run = tmp_path / "run"
    result, watch = fit(make_config(tiny_dataset, epochs=1, batch_size=12, optim=optim), run)

    assert result.outcome is Outcome.COMPLETED, result.message
    lrs = [e.lr["default"] for e in watch.of("batch_end")]
    assert all(0 < lr <= 0.01 for lr in lrs)
    end = epoch_lines(run)[0]["lr"]["default"]
    if schedule == "none":
        assert end == 0.01
    elif schedule == "cosine":
        assert end < 0.01


def test_lr_factor_cosine_falls_from_one_to_zero() -> None:
    factors = [lr_factor("cosine", s, 100, 0, 10) for s in range(101)]
    assert factors[0] == 1.0 and factors[50] == pytest.approx(0.5) and factors[100] == 0.0
    assert factors[99] < 0.01
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))


@pytest.mark.parametrize("schedule", ["cosine", "none", "step"])
def test_lr_factor_warmup_rises_linearly_then_hands_over(schedule: str) -> None:
    warm = [lr_factor(schedule, s, 100, 4, 10) for s in range(4)]
    steps = [b - a for a, b in zip(warm, warm[1:], strict=False)]
    assert all(s == pytest.approx(steps[0]) and s > 0 for s in steps)
    assert 0 < warm[0] < warm[-1] < 1.0
    assert lr_factor(schedule, 4, 100, 4, 10) == 1.0


def test_lr_factor_onecycle_peaks_at_30_percent() -> None:
    factors = [lr_factor("onecycle", s, 100, 0, 10) for s in range(100)]
    assert max(range(100), key=factors.__getitem__) == 29  # as torch.optim.lr_scheduler.OneCycleLR
    assert factors[29] == pytest.approx(1.0) and factors[0] == pytest.approx(1 / 25)
    assert factors[-1] == pytest.approx(1 / 25 / 1e4)  # the minimum, at the last step
    assert all(a < b for a, b in zip(factors[:29], factors[1:30], strict=False))
    assert all(a > b for a, b in zip(factors[29:], factors[30:], strict=False))


def test_lr_factor_step_decays_by_gamma_every_step_size_epochs() -> None:
    per_epoch, step_size, gamma = 5, 2, 0.5
    by_epoch = [lr_factor("step", e * per_epoch + s, 100, 0, per_epoch, step_size, gamma)
                for e in range(6) for s in (0, per_epoch - 1)]
    assert by_epoch == [1.0] * 4 + [0.5] * 4 + [0.25] * 4
    assert all(lr_factor("none", s, 100, 0, 10) == 1.0 for s in range(100))


@pytest.fixture(scope="module")
def imbalanced_dataset(tmp_path_factory: pytest.TempPathFactory,
                       make_tiny_dataset: Callable[[Path], Path]) -> Path:
    root = make_tiny_dataset(tmp_path_factory.mktemp("imbalanced") / "data")
    for extra in sorted((root / "red").iterdir())[3:]:
        extra.unlink()  # red 3, green 10, blue 10: ratio above 3 earns a warning
    return root


@pytest.mark.parametrize("options", [
    pytest.param({"loss": "focal"}, id="focal"),
    pytest.param({"label_smoothing": 0.1}, id="label-smoothing"),
    pytest.param({"loss": "focal", "label_smoothing": 0.1}, id="focal-smoothing"),
    pytest.param({"data_options": {"balance": "loss"}}, id="class-weighted-loss"),
    pytest.param({"data_options": {"balance": "sampler"}}, id="weighted-sampler"),
    pytest.param({"accumulate": 2}, id="accumulate-2"),
    pytest.param({"grad_clip": 0.5}, id="grad-clip"),
    pytest.param({"channels_last": False}, id="no-channels-last"),
    pytest.param({"precision": "bf16"}, id="bf16-autocast"),
    pytest.param({"data_options": {"val_fraction": 0.0}}, id="no-validation"),
])
def test_loss_balance_and_loop_options_run(tmp_path: Path, options: dict[str, Any],
                                           imbalanced_dataset: Path) -> None:
    run = tmp_path / "run"
    result, watch = fit(make_config(imbalanced_dataset, epochs=1, **options), run)

    assert result.outcome is Outcome.COMPLETED, result.message
    started = watch.of("fit_start")[0]
    assert any("imbalanced" in w.message for w in watch.of("warning"))
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    steps = started.steps_per_epoch
    assert checkpoint["global_step"] == math.ceil(steps / options.get("accumulate", 1))
    assert started.channels_last is options.get("channels_last", True)
    assert started.precision == options.get("precision", "fp32")
    line = epoch_lines(run)[0]
    if options.get("data_options", {}).get("val_fraction") == 0.0:
        assert line["val_loss"] is None and line["val_acc"] is None
    else:
        assert math.isfinite(line["train_loss"]) and math.isfinite(line["val_loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16", "auto"])
def test_cuda_mixed_precision_runs(tiny_dataset: Path, tmp_path: Path, precision: str) -> None:
    config = make_config(tiny_dataset, epochs=1, device="cuda", precision=precision,
                         deterministic=False)
    result, watch = fit(config, tmp_path / "run")
    assert result.outcome is Outcome.COMPLETED, result.message
    assert watch.of("fit_start")[0].device.startswith("cuda")


def test_dataloader_workers_use_a_safe_start_method_and_shut_down_on_stop(
        tiny_dataset: Path, tmp_path: Path) -> None:
    trainer = Trainer(make_config(tiny_dataset, epochs=2, workers=1), tmp_path / "run")
    stop = threading.Event()
    methods = []

    def stop_now(count: int) -> None:  # workers are running by now
        methods.append(trainer.train_loader.multiprocessing_context.get_start_method())
        stop.set()

    Watch(trainer, on_train_forward=stop_now)
    result = trainer.fit(stop)

    assert result.outcome is Outcome.CANCELLED
    assert methods and methods[0] in ("forkserver", "spawn")
    assert multiprocessing.active_children() == []


# ---------------------------------------------------------------------------------------------
# Errors a user can cause


def _holds_a_run(data: Path, run: Path, completed: Path) -> RunConfig:
    copy_run(completed, run)
    return make_config(data, epochs=1)


ERRORS: list[Any] = [
    pytest.param(lambda d, r, c: make_config(d.parent / "missing"), "does not exist",
                 id="missing-data-folder"),
    pytest.param(lambda d, r, c: make_config(""), "no dataset folder", id="no-data-folder"),
    pytest.param(lambda d, r, c: make_config(d, freeze=FreezeSpec(freeze=("layer4",))),
                 "freeze pattern 'layer4' matches no parameter", id="freeze-matches-nothing"),
    pytest.param(lambda d, r, c: make_config(d, freeze=FreezeSpec(unfreeze=("layr4",))),
                 "unfreeze pattern 'layr4' matches no parameter", id="unfreeze-matches-nothing"),
    pytest.param(lambda d, r, c: make_config(d, stages=(StageSpec(
        epoch=2, freeze=FreezeSpec(freeze=("nope",))),)),
                 "'nope' matches no parameter", id="stage-pattern-matches-nothing"),
    pytest.param(lambda d, r, c: make_config(d, freeze=FreezeSpec(freeze=("*",))),
                 "every parameter is frozen", id="all-frozen"),
    pytest.param(lambda d, r, c: make_config(d, stages=(StageSpec(
        epoch=2, freeze=FreezeSpec(freeze=("*",))),)),
                 "every parameter is frozen at epoch 2", id="stage-freezes-everything"),
    pytest.param(lambda d, r, c: make_config(d, freeze=FreezeSpec(preset="up_to", up_to="layer9")),
                 "names no module", id="up-to-unknown-module"),
    pytest.param(_holds_a_run, "already holds a run", id="out-holds-a-run"),
    pytest.param(lambda d, r, c: make_config(d, precision="fp16"), "fp16 needs a CUDA GPU",
                 id="fp16-on-cpu"),
    pytest.param(lambda d, r, c: make_config(d, device="cuda"), "no CUDA GPU is available",
                 id="cuda-without-cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")),
    pytest.param(lambda d, r, c: RunConfig(data=DataConfig(root=str(d), image_size=32),
                                        model=ModelConfig(backbone="nosuchnet", weights="none"),
                                        train=TrainConfig(device="cpu")),
                 "unknown backbone 'nosuchnet'", id="unknown-backbone"),
]


@pytest.mark.parametrize("make,message", ERRORS)
def test_errors_a_user_can_cause_end_the_fit_with_one_sentence(
        tiny_dataset: Path, tmp_path: Path, completed_run: Path,
        make: Callable[[Path, Path, Path], RunConfig], message: str) -> None:
    run = tmp_path / "run"
    config = make(tiny_dataset, run, completed_run)
    existed = run.exists()

    result, watch = fit(config, run)  # never raises

    assert result.outcome is Outcome.FAILED
    assert message in result.message, result.message
    assert "\n" not in result.message and "unexpectedly" not in result.message
    assert watch.of("fit_end") == [result] and watch.of("epoch_end") == []
    assert run.exists() is existed  # a failed start leaves no half-made run folder


def test_resuming_a_run_that_already_reached_its_epochs_fails_with_advice(
        completed_run: Path, tmp_path: Path) -> None:
    copy_run(completed_run, tmp_path / "run")
    result = Trainer.resume_run(tmp_path / "run").fit()
    assert result.outcome is Outcome.FAILED
    assert re.search(r"already completed 1 epochs?\b", result.message)
    assert "--epochs" in result.message


def test_a_learning_rate_pattern_that_matches_nothing_is_reported(tiny_dataset: Path,
                                                                  tmp_path: Path) -> None:
    groups = (ParamGroupSpec("layr4", ("layr4",), lr=0.0),)  # a typo for a real module
    result, watch = fit(make_config(tiny_dataset, epochs=1, optim=OptimConfig(groups=groups)),
                        tmp_path / "run")
    warned = any("layr4" in w.message for w in watch.of("warning"))
    assert warned or (result.outcome is Outcome.FAILED and "layr4" in result.message)
