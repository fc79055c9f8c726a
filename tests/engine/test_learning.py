"""The live learning view's figures: gradient norms and update-to-weight ratios of sampled
optimizer steps, at most twice a second, for trainable parameters only, under the model's names
(also when a feature-cache suffix trains)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from studio.engine.config import (
    DataConfig,
    FreezeSpec,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from studio.engine.events import (
    CacheReport,
    Callback,
    LayerStats,
    LineEmitter,
    Outcome,
    event_from_line,
    event_to_line,
)
from studio.engine.learning import SAMPLE_INTERVAL, LearningProbe, listens, watch
from studio.engine.optim import Schedule, Stepper
from studio.engine.trainer import Trainer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tiny_net() -> tuple[nn.Module, torch.optim.Optimizer, list[str]]:
    """Two linear layers; the first is frozen (not in the optimizer, as the trainer does)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    for p in net[0].parameters():
        p.requires_grad_(False)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    params = dict(net.named_parameters())
    groups = [{"params": [params[n] for n in names], "param_names": names, "name": "default",
               "lr": 0.1, "studio_base_lr": 0.1}]
    return net, torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-2), names


def stepper_for(optimizer: torch.optim.Optimizer, clip: float = 0.0) -> Stepper:
    return Stepper(optimizer, Schedule(OptimConfig(schedule="none"), 10, 1), clip, fp16=False)


def test_a_sampled_step_reports_each_trainable_tensors_grad_norm_and_update_ratio() -> None:
    net, optimizer, names = tiny_net()
    events: list[LayerStats] = []
    clock = FakeClock()
    stepper = stepper_for(optimizer)
    stepper.observer = LearningProbe(events.append, clock=clock)
    params = dict(net.named_parameters())
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for step in range(3):
        clock.now = step * SAMPLE_INTERVAL  # every step is due
        stepper.backward(nn.functional.cross_entropy(net(x), y))
        grads = {n: params[n].grad.norm().item() for n in names}
        before = {n: params[n].detach().clone() for n in names}
        stepper.step(list(params[n] for n in names), step)
        event = events[-1]
        assert event.global_step == step + 1
        assert set(event.grad_norm) == set(names) == {"2.weight", "2.bias"}  # 0.* is frozen
        for name in names:
            after = params[name].detach()
            assert event.grad_norm[name] == pytest.approx(grads[name], rel=1e-5)
            assert event.weight_norm[name] == pytest.approx(before[name].norm().item(), rel=1e-5)
            ratio = (after - before[name]).norm().item() / before[name].norm().item()
            assert event.update_ratio(name) == pytest.approx(ratio, rel=1e-4)
            assert ratio > 0
    assert len(events) == 3
    assert all(p.grad is None for p in net.parameters()), "the stepper still zeroes gradients"


def test_the_grad_norm_is_taken_before_clipping_and_the_update_after() -> None:
    net, optimizer, names = tiny_net()
    events: list[LayerStats] = []
    stepper = stepper_for(optimizer, clip=1e-3)
    stepper.observer = LearningProbe(events.append)
    params = dict(net.named_parameters())
    stepper.backward(nn.functional.cross_entropy(net(torch.randn(16, 4)) * 50,
                                                 torch.randint(0, 3, (16,))))
    total = torch.cat([params[n].grad.flatten() for n in names]).norm().item()
    assert total > 1e-3
    stepper.step([params[n] for n in names], 0)
    (event,) = events
    reported = sum(event.grad_norm[n] ** 2 for n in names) ** 0.5
    assert reported == pytest.approx(total, rel=1e-5)  # what the loss asked for, unclipped


def test_at_most_one_sample_per_interval_and_none_in_between() -> None:
    net, optimizer, _names = tiny_net()
    events: list[LayerStats] = []
    clock = FakeClock()
    stepper = stepper_for(optimizer)
    stepper.observer = LearningProbe(events.append, clock=clock)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    times = []
    for step in range(40):  # 4 s of steps of 0.1 s
        clock.now = step * 0.1
        stepper.backward(nn.functional.cross_entropy(net(x), y))
        before = len(events)
        stepper.step([p for p in net.parameters() if p.requires_grad], step)
        if len(events) > before:
            times.append(clock.now)
    assert times[0] == 0.0, "the first step fills the tree at once"
    assert all(b - a >= SAMPLE_INTERVAL - 1e-9 for a, b in zip(times, times[1:], strict=False))
    assert 7 <= len(times) <= 8  # 4 s at 2 a second
    assert [e.global_step for e in events] == [round(t * 10) + 1 for t in times]


def test_a_costly_sample_waits_longer_so_the_view_stays_within_its_budget() -> None:
    class SlowClock(FakeClock):
        """Every reading inside the probe takes 20 ms: a sample costs about 40 ms."""

        def __call__(self) -> float:
            self.now += 0.02
            return self.now

    net, optimizer, _names = tiny_net()
    events: list[LayerStats] = []
    clock = SlowClock()
    stepper = stepper_for(optimizer)
    stepper.observer = LearningProbe(events.append, clock=clock, budget=0.03)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    sampled_at = []
    for step in range(100):  # steps of 0.1 s
        clock.now += 0.1
        stepper.backward(nn.functional.cross_entropy(net(x), y))
        before = len(events)
        stepper.step([p for p in net.parameters() if p.requires_grad], step)
        if len(events) > before:
            sampled_at.append(clock.now)
    gaps = [b - a for a, b in zip(sampled_at, sampled_at[1:], strict=False)]
    assert gaps and min(gaps) >= 0.04 / 0.03 - 0.1  # not every 0.5 s: 40 ms is 3 % of 1.3 s


def test_only_a_callback_that_listens_turns_sampling_on() -> None:
    class Quiet(Callback):
        pass

    class Listener(Callback):
        def on_layer_stats(self, event: LayerStats) -> None:
            pass

    _net, optimizer, _names = tiny_net()
    stepper = stepper_for(optimizer)
    watch(stepper, [Quiet()], lambda hook, event: None)
    assert stepper.observer is None, "a headless run pays nothing"
    assert listens([Quiet(), Listener()]) and listens([LineEmitter(None)])  # type: ignore[arg-type]
    watch(stepper, [Quiet(), Listener()], lambda hook, event: None)
    assert isinstance(stepper.observer, LearningProbe)


def test_layer_stats_travel_as_a_json_line_unchanged() -> None:
    event = LayerStats(7, {"fc.weight": 0.25, "fc.bias": 1.5e-3},
                       {"fc.weight": 1e-4, "fc.bias": 2e-6}, {"fc.weight": 3.0, "fc.bias": 0.5})
    assert event_from_line(event_to_line("on_layer_stats", event)) == ("on_layer_stats", event)


class Listener(Callback):
    def __init__(self) -> None:
        self.stats: list[LayerStats] = []
        self.caches: list[CacheReport] = []

    def on_layer_stats(self, event: LayerStats) -> None:
        self.stats.append(event)

    def on_cache(self, event: CacheReport) -> None:
        self.caches.append(event)


def test_a_feature_cached_fit_reports_under_the_models_own_names(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import studio.engine.features as features

    features.forget_memory()
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    config = RunConfig(
        data=DataConfig(root=str(tiny_dataset), image_size=32, augment="none", val_fraction=0.3),
        model=ModelConfig(backbone="resnet18", weights="none"),
        freeze=FreezeSpec(preset="up_to", up_to="layer3"),
        optim=OptimConfig(lr=1e-2, schedule="none"),
        train=TrainConfig(epochs=2, batch_size=4, workers=0, precision="fp32", device="cpu",
                          seed=3))
    listener = Listener()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Trainer(config, tmp_path / "run", [listener]).fit()
    finally:
        torch.set_num_threads(threads)
    assert result.outcome is Outcome.COMPLETED
    assert any(c.kind == "features" and c.state == "ready" for c in listener.caches)
    assert listener.stats, "the first step is always sampled"
    import torchvision

    names = [n for n, _ in torchvision.models.resnet18(num_classes=3).named_parameters()]
    trainable = {n for n in names if n.startswith(("layer4.", "fc."))}
    for event in listener.stats:
        assert set(event.grad_norm) == set(event.update_norm) == trainable
        assert all(v > 0 for v in event.grad_norm.values())
        assert all(event.update_ratio(n) > 0 for n in trainable)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "grad_norm" not in lines, "the run folder does not record them"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fp16 gradient scaler needs CUDA")
def test_under_fp16_the_grad_norm_is_the_unscaled_one() -> None:
    net, optimizer, names = tiny_net()
    net.cuda()
    events: list[LayerStats] = []
    stepper = Stepper(optimizer, Schedule(OptimConfig(schedule="none"), 10, 1), 0.0, fp16=True)
    stepper.observer = LearningProbe(events.append)
    params = dict(net.named_parameters())
    x, y = torch.randn(16, 4, device="cuda"), torch.randint(0, 3, (16,), device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = nn.functional.cross_entropy(net(x), y)
    stepper.backward(loss)
    assert stepper.scaler is not None
    scale = stepper.scaler.get_scale()
    expected = {n: params[n].grad.float().norm().item() / scale for n in names}
    stepper.step([params[n] for n in names], 0)
    (event,) = events
    for name in names:
        assert event.grad_norm[name] == pytest.approx(expected[name], rel=1e-3)
