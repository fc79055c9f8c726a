"""Out of memory in a step, as a user meets it: the run goes on with the batch split in pieces,
the same effective batch (the same weights as without the OOM), and says so; a batch of one that
still does not fit is one sentence. Memory runs out on purpose: ``torch.OutOfMemoryError`` is
raised from a model's forward or backward at a chosen step or above a chosen batch."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import studio.engine.parts as parts_module
from studio.engine.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from studio.engine.events import Callback, FitEnded, Outcome, WarningIssued
from studio.engine.memory import MicroBatcher, OutOfMemory, normaliser
from studio.engine.optim import CrossEntropy, FocalLoss, Schedule, Stepper
from studio.engine.trainer import Trainer

BACKBONE = "mobilenet_v3_small"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


class FailingBackward(torch.autograd.Function):
    """Identity forward; the backward raises when its owner says so (after the layers behind
    it have already added to their ``.grad``: a half-done backward)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, owner: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.owner = owner
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        ctx.owner.backwards += 1
        if ctx.owner.backwards in ctx.owner.fail_backwards:
            raise oom()
        return grad, None


class Tiny(nn.Module):
    """A convolutional classifier without BatchNorm or dropout, whose memory runs out for
    training batches above ``limit`` and in the backward calls numbered ``fail_backwards``."""

    def __init__(self, classes: int = 3, limit: int = 10**9,
                 fail_backwards: tuple[int, ...] = ()) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, classes)
        self.limit, self.fail_backwards, self.backwards = limit, set(fail_backwards), 0
        self.seen: list[int] = []  # batch sizes of the training forwards that got through

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > self.limit:
            raise oom()
        hidden = torch.relu(self.body(x)).mean((2, 3))
        out = self.head(FailingBackward.apply(hidden, self))
        if self.training:
            self.seen.append(x.shape[0])
        return out


def batcher(model: nn.Module, criterion: nn.Module | None = None, **kwargs: Any
            ) -> tuple[MicroBatcher, torch.optim.Optimizer, list[str]]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for group in optimizer.param_groups:
        group["studio_base_lr"] = group["lr"]
    stepper = Stepper(optimizer, Schedule(OptimConfig(schedule="none"), 4, 1), 0.0, fp16=False)
    warnings: list[str] = []
    config = RunConfig(data=DataConfig(image_size=32), model=ModelConfig(backbone="tiny"))
    micro = MicroBatcher(stepper, criterion or nn.CrossEntropyLoss(), contextlib.nullcontext,
                         torch.device("cpu"), config, "fp32", warn=warnings.append, **kwargs)
    return micro, optimizer, warnings


def batches(count: int, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 8, 8, generator=generator),
             torch.randint(0, 3, (size,), generator=generator)) for _ in range(count)]


def train_window(model: Tiny, data: list[tuple[torch.Tensor, torch.Tensor]], accumulate: int,
                 **kwargs: Any) -> tuple[dict[str, torch.Tensor], list[str], list[float]]:
    """One optimizer step over ``accumulate`` batches; the weights after it, the warnings and
    the batches' losses."""
    micro, optimizer, warnings = batcher(model, **kwargs)
    losses = []
    for index, (images, targets) in enumerate(data[:accumulate], start=1):
        loss, logits = micro.train(model, images, targets, accumulate=accumulate,
                                   stepping=index == accumulate, epoch=1, step=index)
        assert logits.shape == (images.shape[0], 3) and not logits.requires_grad
        losses.append(loss.item())
    optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, warnings, losses


@pytest.mark.parametrize("accumulate,limit,fail_backwards", [
    (1, 4, ()),  # too big for one piece: 2 × 4
    (1, 4, (2,)),  # …and the second piece's backward fails half done: 4 × 2
    (2, 10**9, (2,)),  # the stepping batch fails after the window's first batch is in .grad
])
def test_oom_halving_keeps_the_effective_batch(accumulate: int, limit: int,
                                               fail_backwards: tuple[int, ...]) -> None:
    data = batches(accumulate)
    expected, none, plain_losses = train_window(Tiny(), data, accumulate)
    model = Tiny(limit=limit, fail_backwards=fail_backwards)
    weights, warnings, losses = train_window(model, data, accumulate)

    assert not none and warnings
    assert warnings[0].startswith(f"the CPU ran out of memory in epoch 1 at step {accumulate} "
                                  f"with batches of 8; continuing with 2 × 4 per step, the "
                                  f"same effective batch")
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert losses == pytest.approx(plain_losses, rel=1e-5)
    if accumulate == 1:  # every image trained once, in the last pieces
        assert sum(model.seen[-8 // model.seen[-1]:]) == 8


@pytest.mark.parametrize("criterion", [
    CrossEntropy(weight=torch.tensor([1.0, 3.0, 0.5]), label_smoothing=0.1),
    FocalLoss(weight=torch.tensor([1.0, 3.0, 0.5])),
    nn.CrossEntropyLoss(),
], ids=["weighted_cross_entropy", "weighted_focal", "cross_entropy"])
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "mixed"])
def test_pieces_add_up_to_the_whole_batchs_gradient_and_loss(criterion: nn.Module,
                                                             soft: bool) -> None:
    images, targets = batches(1, size=7)[0]  # 7 images: pieces of unequal size
    goal = (torch.nn.functional.one_hot(targets, 3).float() * 0.7 + 0.1) if soft else targets
    results = []
    for chunks in (1, 3):
        model = Tiny()
        micro, _, _ = batcher(model, criterion)
        micro.chunks = chunks
        loss, _ = micro.train(model, images, goal, accumulate=1, stepping=True)
        results.append((loss, [p.grad.clone() for p in model.parameters()]))
    (whole, whole_grads), (pieces, piece_grads) = results
    torch.testing.assert_close(pieces, whole)
    for a, b in zip(piece_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert isinstance(normaliser(nn.CrossEntropyLoss(), targets), float)


class FakeDDP:
    """Records which pieces ran under ``no_sync``."""

    def __init__(self) -> None:
        self.synced: list[bool] = []
        self.inside = False

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        self.inside = True
        yield
        self.inside = False


def test_only_the_last_piece_of_a_stepping_batch_synchronises() -> None:
    ddp = FakeDDP()
    model = Tiny()
    model.register_forward_hook(lambda module, args, out: ddp.synced.append(not ddp.inside))
    micro, _, _ = batcher(model)
    micro.chunks = 4
    images, targets = batches(1)[0]
    micro.train(model, images, targets, accumulate=2, stepping=False, ddp=ddp)
    micro.train(model, images, targets, accumulate=2, stepping=True, ddp=ddp)
    assert ddp.synced == [False] * 4 + [False, False, False, True]


def test_a_distributed_run_stops_with_the_flags_for_the_same_effective_batch() -> None:
    model = Tiny(limit=4)
    micro, _, _ = batcher(model, distributed=True, kept=lambda: " (the last good checkpoint, "
                                                                "of epoch 2, is kept)")
    images, targets = batches(1)[0]
    with pytest.raises(OutOfMemory) as error:
        micro.train(model, images, targets, accumulate=1, stepping=True, ddp=FakeDDP(), epoch=3,
                    step=5)
    message = str(error.value)
    assert "epoch 3 at step 5 with batches of 8 per process" in message
    assert "--batch-size 4 --accumulate 2" in message and "epoch 2, is kept" in message


def test_validation_halves_its_pieces_and_gives_the_same_logits() -> None:
    model = Tiny().eval()
    micro, _, warnings = batcher(model)
    images = batches(1, size=6)[0][0]
    expected = model(images)

    def tight(module: nn.Module, args: tuple[torch.Tensor]) -> None:
        if args[0].shape[0] > 2:
            raise oom()

    model.register_forward_pre_hook(tight)
    with torch.no_grad():
        logits = micro.infer(model, images)
    torch.testing.assert_close(logits, expected)
    assert micro.val_chunks == 4 and warnings == [
        "the CPU ran out of memory in validation with batches of 6; validating 2 × 3 at a time",
        "the CPU ran out of memory in validation with batches of 3; validating 4 × 2 at a time"]


# ---------------------------------------------------------------------------------------------
# Through the trainer


def make_config(data: Path, **train: Any) -> RunConfig:
    settings: dict[str, Any] = {"epochs": 1, "batch_size": 8, "workers": 0, "precision": "fp32",
                                "device": "cpu", "deterministic": True}
    settings.update(train)
    return RunConfig(data=DataConfig(root=str(data), image_size=32, augment="light"),
                     model=ModelConfig(backbone=BACKBONE, weights="none"),
                     optim=OptimConfig(schedule="none"), train=TrainConfig(**settings))


class Record(Callback):
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def on_warning(self, event: WarningIssued) -> None:
        self.warnings.append(event.message)


def fit_with(config: RunConfig, run: Path, tight: Callable[[nn.Module, Any], None] | None
             ) -> tuple[FitEnded, Record, Trainer, list[int]]:
    """Fit ``config`` with ``tight`` as a forward pre-hook of the model (it raises the OOMs);
    also the batch sizes of the training forwards that got through."""
    record = Record()
    trainer = Trainer(config, run, [record])
    seen: list[int] = []

    class Hook(Callback):
        def on_fit_start(self, event: Any) -> None:
            model = trainer.model
            if tight is not None:
                model.register_forward_pre_hook(tight)
            model.register_forward_hook(
                lambda module, args, out: seen.append(args[0].shape[0]) if module.training
                else None)
            trainer.final = model  # type: ignore[attr-defined]

    trainer.callbacks.append(Hook())
    return trainer.fit(), record, trainer, seen


def training_above(limit: int, from_step: int = 1) -> Callable[[nn.Module, Any], None]:
    """A pre-hook: training batches above ``limit`` images run out of memory, from the
    ``from_step``-th such batch on (the loader's batches come in whole until the first OOM)."""
    big = 0

    def tight(module: nn.Module, args: tuple[torch.Tensor]) -> None:
        nonlocal big
        if module.training and args[0].shape[0] > limit:
            big += 1
            if big >= from_step:
                raise oom()

    return tight


def test_a_run_that_runs_out_of_memory_goes_on_with_half_batches_and_says_so(
        tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result, record, _, seen = fit_with(make_config(tiny_dataset, epochs=2), run,
                                       training_above(4))

    assert result.outcome is Outcome.COMPLETED, result.message
    sentence = ("the CPU ran out of memory in epoch 1 at step 1 with batches of 8; continuing "
                "with 2 × 4 per step, the same effective batch")
    assert record.warnings == [sentence]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"event": "warning", "message": sentence} in [
        {k: v for k, v in line.items() if k != "time"} for line in lines]
    epochs = [line for line in lines if line["event"] == "epoch"]
    assert [line["epoch"] for line in epochs] == [1, 2]
    assert seen == [4] * 12  # 24 training images an epoch, each trained once, in halves
    assert all(math.isfinite(line["train_loss"]) for line in epochs)


def tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's model is :class:`Tiny` (no BatchNorm, no dropout), with the preprocessing of
    the real backbone."""
    real = parts_module.build_model

    def build(config: Any, classes: int, size: int) -> Any:
        built = real(config, classes, size)
        built.model, built.head = Tiny(classes), "head"
        return built

    monkeypatch.setattr(parts_module, "build_model", build)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_weights_after_an_oom_recovered_step_are_those_without_the_oom(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        accumulate: int) -> None:
    tiny_model(monkeypatch)
    config = make_config(tiny_dataset, accumulate=accumulate)
    plain, _, plain_trainer, _ = fit_with(config, tmp_path / "plain", None)
    halved, record, trainer, seen = fit_with(config, tmp_path / "halved",
                                             training_above(4, from_step=2))

    assert plain.outcome is halved.outcome is Outcome.COMPLETED, halved.message
    assert record.warnings[0].startswith("the CPU ran out of memory in epoch 1 at step 2 ")
    expected = plain_trainer.final.state_dict()  # type: ignore[attr-defined]
    for name, value in trainer.final.state_dict().items():  # type: ignore[attr-defined]
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    replayed = 8 if accumulate == 2 else 0  # the window's first batch, redone in halves
    assert sum(seen) == 24 + replayed


def test_a_batch_of_one_that_does_not_fit_is_one_sentence(tiny_dataset: Path,
                                                          tmp_path: Path) -> None:
    run = tmp_path / "run"
    result, record, _, _ = fit_with(make_config(tiny_dataset), run, training_above(0))

    assert result.outcome is Outcome.FAILED
    message = result.message
    assert message.startswith("the CPU ran out of memory in epoch 1 at step 1 even with one "
                              "image at a time: mobilenet_v3_small at 32 px in fp32")
    for advice in ("smaller image size", "head_only", "bf16 or fp16", "smaller backbone"):
        assert advice in message
    assert "\n" not in message and len(record.warnings) == 3  # 8 → 4 → 2 → 1
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["outcome"] == "failed"


def test_validation_that_runs_out_of_memory_goes_on_in_pieces(tiny_dataset: Path,
                                                              tmp_path: Path) -> None:
    def tight(module: nn.Module, args: tuple[torch.Tensor]) -> None:
        if not module.training and args[0].shape[0] > 3:
            raise oom()

    result, record, _, _ = fit_with(make_config(tiny_dataset), tmp_path / "run", tight)
    assert result.outcome is Outcome.COMPLETED, result.message
    assert record.warnings == ["the CPU ran out of memory in validation with batches of 6; "
                               "validating 2 × 3 at a time"]


def test_memory_running_out_outside_a_step_is_one_sentence_too(tiny_dataset: Path,
                                                               tmp_path: Path) -> None:
    record = Record()
    trainer = Trainer(make_config(tiny_dataset), tmp_path / "run", [record])

    def full(optimizer: Any, args: Any, kwargs: Any) -> None:
        raise oom()  # the optimizer's first step allocates its state

    class Hook(Callback):
        def on_fit_start(self, event: Any) -> None:
            assert trainer.parts is not None and trainer.parts.optimizer is not None
            trainer.parts.optimizer.register_step_pre_hook(full)

    trainer.callbacks.append(Hook())
    result = trainer.fit()
    assert result.outcome is Outcome.FAILED
    assert result.message.startswith("the CPU ran out of memory in epoch 1: mobilenet_v3_small "
                                     "at 32 px in fp32 does not fit on cpu; training stopped — "
                                     "try a smaller image size than 32 px"), result.message
