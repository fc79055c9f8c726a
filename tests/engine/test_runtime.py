"""The placement seam at world size 1, the samplers that shard a run, events as JSON lines, and
the unused-parameter probe. (Several real processes: tests/test_distributed.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from studio.engine.errors import StudioError
from studio.engine.events import (
    HOOKS,
    BatchEnded,
    CacheReport,
    CheckpointSaved,
    EpochEnded,
    FitEnded,
    FitStarted,
    LayerStats,
    Outcome,
    StageStarted,
    WarningIssued,
    event_from_line,
    event_to_line,
)
from studio.engine.parts import unused_trainable
from studio.engine.runtime import Placement, ShardSampler, WeightedDistributedSampler


def shards(world: int, size: int, seed: int, epoch: int) -> list[list[int]]:
    out = []
    for rank in range(world):
        sampler = Placement(torch.device("cpu"), rank=rank, world_size=world).wrap_sampler(
            size, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("world", [2, 3, 4])
def test_the_ranks_batches_together_are_the_batches_of_one_process(world: int) -> None:
    """Rank r's k-th batch of B holds order[k·W·B + r + W·j]: the ranks' k-th batches
    together are exactly one process's k-th batch of W·B, epoch after epoch."""
    size, batch = 24 * world, 4
    for epoch in (1, 2):
        [alone] = shards(1, size, seed=7, epoch=epoch)
        ranks = shards(world, size, seed=7, epoch=epoch)
        for k in range(size // (world * batch)):
            together = sorted(i for shard in ranks for i in shard[k * batch:(k + 1) * batch])
            assert together == sorted(alone[k * world * batch:(k + 1) * world * batch])
    assert shards(1, size, 7, 1) != shards(1, size, 7, 2)  # a new order every epoch


@pytest.mark.parametrize("world,size", [(1, 10), (2, 11), (3, 7), (4, 2), (4, 0)])
def test_validation_shards_hold_every_image_exactly_once(world: int, size: int) -> None:
    seen = [i for rank in range(world) for i in ShardSampler(size, rank, world)]
    assert sorted(seen) == list(range(size))


def test_weighted_draws_are_one_stream_split_between_the_ranks() -> None:
    weights = torch.tensor([1.0] * 30 + [9.0] * 10)
    alone = WeightedDistributedSampler(weights, 1, 0, seed=3)
    ranks = [WeightedDistributedSampler(weights, 2, r, seed=3) for r in range(2)]
    for sampler in (alone, *ranks):
        sampler.set_epoch(5)
    stream = list(alone)
    assert [stream[r::2] for r in range(2)] == [list(s) for s in ranks]
    rare = sum(i >= 30 for i in stream) / len(stream)
    assert 0.5 < rare < 0.95  # the rare class is drawn about as often as the common one


def test_a_world_of_one_is_the_identity() -> None:
    placement = Placement.single("cpu")
    model = nn.Linear(2, 2)
    assert (placement.is_main, placement.distributed, placement.world_size) == (True, False, 1)
    assert placement.wrap_model(model) is model
    value = torch.tensor(3.0)
    placement.reduce(value)
    assert value.item() == 3.0
    assert placement.agree(True) and not placement.agree(False)
    assert placement.broadcast_object({"a": 1}) == {"a": 1}
    assert placement.gather_object(5) == [5]
    assert placement.replicas_differ(dict(model.named_parameters())) == []
    assert placement.on_main(lambda: 42) == 42

    def refuse() -> None:
        raise StudioError("the folder cannot be written")

    with pytest.raises(StudioError, match="cannot be written"):
        placement.on_main(refuse)


EVENTS = [
    ("on_fit_start", FitStarted("/r", 3, 1, 4, 10, 5, ("a", "b"), "cpu", "fp32", False, 10, 20,
                                2)),
    ("on_stage_start", StageStarted(2, 1, 5, 20, ("head", "layer4"))),
    ("on_batch_end", BatchEnded(1, 2, 4, 2, 0.5, 0.25, {"default": 1e-3}, 99.0, 12.0)),
    ("on_epoch_end", EpochEnded(1, 0.5, 0.4, math.nan, 0.3, {"a": 1e-3}, 1.0, 10.0, True, 5)),
    ("on_checkpoint", CheckpointSaved(1, "best", "/r/checkpoints/best.pt")),
    ("on_warning", WarningIssued("imbalanced: «rare» has 3 images")),
    ("on_cache", CacheReport("features", "ready", 30, 1.5, 0.2, "cut after flatten")),
    ("on_fit_end", FitEnded(Outcome.CANCELLED, "stopped", 1, None, None, "val_acc", "/r", 2.0)),
    ("on_layer_stats", LayerStats(7, {"fc.weight": 0.5}, {"fc.weight": 1e-3},
                                  {"fc.weight": 2.0})),
]


@pytest.mark.parametrize("hook,event", EVENTS, ids=[hook for hook, _ in EVENTS])
def test_every_event_survives_a_json_line(hook: str, event: object) -> None:
    line = event_to_line(hook, event)
    assert "\n" not in line and "NaN" not in line  # strict JSON: NaN goes as null
    again_hook, again = event_from_line(line)  # type: ignore[misc]
    assert again_hook == hook and type(again) is type(event)
    if isinstance(event, EpochEnded):
        assert math.isnan(again.val_loss) and again.val_images == 5  # type: ignore[union-attr]
    else:
        assert again == event
    assert {h for h, _ in EVENTS} == set(HOOKS)


@pytest.mark.parametrize("line", ["", "epoch 1/3: train loss 0.5", "{}", '{"hook": "x"}',
                                  '{"hook": "on_warning", "event": {"nope": 1}}'])
def test_other_lines_are_not_events(line: str) -> None:
    assert event_from_line(line) is None


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.used = nn.Linear(4, 2)
        self.spare = nn.Linear(4, 2)  # never called in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(self.body(x))


def test_the_probe_finds_parameters_without_a_gradient_and_changes_nothing() -> None:
    model = TwoHeads().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sample = torch.randn(2, 4)
    rng = torch.get_rng_state()
    assert unused_trainable(model, sample) == ["spare.weight", "spare.bias"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())
    model.spare.requires_grad_(False)
    assert unused_trainable(model, torch.randn(2, 4)) == []


def test_sync_bn_turns_batchnorm_into_syncbatchnorm_with_the_same_state_names(
        tiny_dataset: object) -> None:
    """Only with several processes (alone there is nothing to synchronise); the checkpoint keys
    stay those of the plain model, so evaluate and export rebuild it as usual."""
    from studio.engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from studio.engine.parts import build_parts

    config = RunConfig(data=DataConfig(root=str(tiny_dataset), image_size=16, augment="none"),
                       model=ModelConfig(backbone="resnet18", weights="none"),
                       train=TrainConfig(sync_bn=True, device="cpu", workers=0))
    alone = build_parts(config)
    two = build_parts(config, placement=Placement(torch.device("cpu"), rank=1, world_size=2))
    kinds = {type(m).__name__ for m in two.model.modules()}
    assert "SyncBatchNorm" in kinds and "BatchNorm2d" not in kinds
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in alone.model.modules())
    assert list(two.model.state_dict()) == list(alone.model.state_dict())
    assert len(two.train_sampler) == math.ceil(len(alone.train_sampler) / 2)  # rank 1's half
    alone.close()
    two.close()
