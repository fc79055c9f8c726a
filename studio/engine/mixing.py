"""MixUp and CutMix on training batches, through torchvision.transforms.v2.

A mixed batch trains against soft targets (each row a convex mix of two one-hot labels), which
the loss takes as class probabilities; class weights and label smoothing apply to them as to
hard labels. Training accuracy counts a prediction right when it names the label with the larger
share of the mix (the image's dominant class), so it stays comparable to unmixed epochs.
Validation is never mixed.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from studio.engine.config import TrainConfig


class Mixer:
    """Mixes a batch with probability ``mix_prob`` during the epochs it is on: MixUp, CutMix,
    or one of the two per batch (CutMix with probability ``mix_switch``)."""

    def __init__(self, train: TrainConfig, num_classes: int) -> None:
        self.prob, self.until = train.mix_prob, train.mix_until
        choices, weights = [], []
        if train.mixup > 0:
            choices.append(v2.MixUp(alpha=train.mixup, num_classes=num_classes))
            weights.append(1.0 - train.mix_switch if train.cutmix > 0 else 1.0)
        if train.cutmix > 0:
            choices.append(v2.CutMix(alpha=train.cutmix, num_classes=num_classes))
            weights.append(train.mix_switch if train.mixup > 0 else 1.0)
        self.transform = (None if not choices else choices[0] if len(choices) == 1
                          else v2.RandomChoice(choices, p=weights))

    @property
    def enabled(self) -> bool:
        return self.transform is not None

    def active(self, epoch: int) -> bool:
        return self.transform is not None and (self.until == 0 or epoch <= self.until)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, loss targets, the label accuracy is counted against). Unmixed batches pass
        through with their hard labels."""
        if not self.active(epoch) or images.shape[0] < 2 or \
                torch.rand(()).item() >= self.prob:
            return images, targets, targets
        assert self.transform is not None
        mixed, soft = self.transform(images, targets)
        return mixed, soft, soft.argmax(1)
