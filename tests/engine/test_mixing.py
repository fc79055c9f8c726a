"""MixUp / CutMix: a mixed batch is a convex mix with matching soft targets, mixing stops when
asked, losses take the soft targets (class weights, focal), and a run says the feature cache is
off because images are mixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from studio.cli import main
from studio.engine.config import ConfigError, TrainConfig
from studio.engine.mixing import Mixer
from studio.engine.optim import CrossEntropy, FocalLoss

CLASSES = 3


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 8, 8, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2])


def test_a_mixup_batch_is_a_convex_mix_of_two_images_and_their_labels() -> None:
    torch.manual_seed(0)
    images, targets = _batch()
    mixed, soft, labels = Mixer(TrainConfig(mixup=0.4), CLASSES)(images, targets, epoch=1)
    partner, partner_labels = images.roll(1, 0), targets.roll(1, 0)  # torchvision's pairing
    lam = float(soft[0, targets[0]])
    assert 0.0 < lam < 1.0
    expected = lam * F.one_hot(targets, CLASSES) + (1 - lam) * F.one_hot(partner_labels, CLASSES)
    torch.testing.assert_close(soft, expected.float())
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * partner)
    assert torch.equal(labels, soft.argmax(1))  # accuracy counts the dominant label


def test_a_cutmix_batch_pastes_a_box_and_weighs_labels_by_its_area() -> None:
    torch.manual_seed(1)
    images, targets = _batch()
    mixed, soft, _ = Mixer(TrainConfig(cutmix=1.0), CLASSES)(images, targets, epoch=1)
    partner = images.roll(1, 0)
    from_partner = (mixed == partner).all(1) & (mixed != images).any(1)  # (N, H, W)
    kept = 1.0 - from_partner[0].float().mean().item()
    assert torch.equal(from_partner[0], from_partner[1])  # one box for the whole batch
    assert ((mixed == images) | (mixed == partner)).all()
    assert float(soft[0, targets[0]]) == pytest.approx(kept, abs=1e-6)


def test_mixing_stops_after_its_epoch_and_follows_its_probability() -> None:
    images, targets = _batch()
    mixer = Mixer(TrainConfig(mixup=1.0, mix_until=2), CLASSES)
    assert mixer(images, targets, epoch=2)[1].ndim == 2
    unchanged, hard, labels = mixer(images, targets, epoch=3)
    assert unchanged is images and hard is targets and labels is targets
    never = Mixer(TrainConfig(mixup=1.0, mix_prob=0.0), CLASSES)
    assert never(images, targets, epoch=1)[1] is targets
    assert not Mixer(TrainConfig(), CLASSES).enabled
    with pytest.raises(ConfigError, match="mixup"):
        TrainConfig(mixup=-1.0)


def test_the_losses_take_soft_targets_as_they_take_labels() -> None:
    logits = torch.randn(6, CLASSES)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    one_hot = F.one_hot(targets, CLASSES).float()
    weight = torch.tensor([1.0, 2.0, 0.5])
    for loss in (FocalLoss(gamma=2.0, weight=weight), CrossEntropy(weight=weight),
                 CrossEntropy(weight=weight, label_smoothing=0.1), CrossEntropy()):
        torch.testing.assert_close(loss(logits, one_hot), loss(logits, targets))


def test_a_mixup_run_trains_on_images_and_says_why(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = main(["train", "--data", str(tiny_dataset), "--out", str(run), "--backbone",
                 "mobilenet_v3_small", "--weights", "none", "--image-size", "32", "--epochs", "2",
                 "--device", "cpu", "--workers", "0", "--freeze-preset", "head_only",
                 "--mixup", "0.4", "--cutmix", "1.0", "--balance", "loss", "--loss", "focal",
                 "--no-tensorboard"])
    assert code == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    cache = next(r for r in records if r["event"] == "cache" and r["kind"] == "features")
    assert cache["state"] == "off" and "MixUp/CutMix" in cache["detail"]
    assert all(r["train_loss"] is not None for r in records if r["event"] == "epoch")
