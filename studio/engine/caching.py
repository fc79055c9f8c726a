"""What a stage's batches are: images from files, decoded images kept in memory, or the cached
output of the frozen prefix (see :mod:`studio.engine.features`).

:class:`FeedPlanner` decides per stage, builds the cache, and reports what it did (or why not)
as :class:`CacheReport` events. Each process of a distributed run builds the caches it needs
for the whole split itself, the same on every process: the shards change every epoch, and
computing everything locally needs no communication.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from studio.engine.data import Sample
from studio.engine.events import CacheReport
from studio.engine.features import (
    MIN_PREFIX_SHARE,
    CachedBatches,
    CacheStopped,
    ModelSplit,
    SplitRefused,
    cache_key,
    load_or_build,
    prefix_share,
    split_model,
)
from studio.engine.images import (
    DecodedDataset,
    FolderDataset,
    build_transforms,
    decode_images,
    decoded_size_estimate,
    image_cache_budget,
    transform_parts,
)
from studio.engine.parts import Parts


@dataclass
class Feed:
    """The batches of a stage and the module they go through (the model, or the suffix of a
    split model when the prefix's output is cached)."""

    train: Any
    val: Any
    module: nn.Module

    def set_epoch(self, seed: int) -> None:
        if isinstance(self.train, CachedBatches):
            self.train.set_epoch(seed)

    def probe(self) -> torch.Tensor:
        """Two training inputs (two, so BatchNorm in train mode accepts them)."""
        if isinstance(self.train, CachedBatches):
            return self.train.store.features[0, :2]
        dataset = self.train.dataset
        return torch.stack([dataset[i][0] for i in range(min(2, len(dataset)))])


class FeedPlanner:
    def __init__(self, parts: Parts, report: Callable[[CacheReport], None]) -> None:
        self.parts = parts
        self.report = report
        self._images: tuple[DataLoader, DataLoader] | None = None  # decoded once per fit

    def images(self) -> Feed:
        parts = self.parts
        return Feed(parts.train_loader, parts.val_loader, parts.model)

    def prepare(self, epoch: int, stop: threading.Event) -> Feed | None:
        """This stage's feed: features, else (decoded) images; None when stopped while
        building."""
        plan = self._plan_features(epoch)
        if isinstance(plan, str):
            self.report(CacheReport("features", "off", detail=plan))
            return self._image_feed(epoch, stop)
        return self._feature_feed(*plan, stop)

    def _stage_epochs(self, epoch: int) -> int:
        """Epochs from ``epoch`` to the end of its stage."""
        cfg = self.parts.config
        later = [s.epoch for s in cfg.stages if s.epoch > epoch]
        return min([*later, cfg.train.epochs + 1]) - epoch

    def _plan_features(self, epoch: int) -> tuple[ModelSplit, float] | str:
        """Where to cut the model for this stage and the prefix's share of the FLOPs, or why
        the frozen prefix cannot (or should not) be cached."""
        parts = self.parts
        cfg = parts.config
        if cfg.train.feature_cache == "off":
            return "switched off"
        if self._stage_epochs(epoch) < 2:
            return "a single epoch sees each image once, so caching would not pay"
        if cfg.train.mixup > 0 or cfg.train.cutmix > 0:
            return "MixUp/CutMix mix the images themselves, so their features cannot be cached"
        if cfg.data.augment != "none" and cfg.train.cache_views == 0:
            return (f"images are augmented ({cfg.data.augment}); set cache_views to cache "
                    f"augmented views, or augment none")
        try:
            split = split_model(parts.model, parts.frozen, parts.bn_frozen)
        except SplitRefused as reason:
            return str(reason)
        share = prefix_share(parts.model, split, parts.built.preprocessing.crop)
        if share < MIN_PREFIX_SHARE:
            return (f"the frozen layers before {split.boundary} are only {share:.0%} of the "
                    f"computation")
        return split, share

    def _feature_feed(self, split: ModelSplit, share: float, stop: threading.Event
                      ) -> Feed | None:
        parts = self.parts
        cfg = parts.config
        augment = cfg.data.augment
        views = cfg.train.cache_views if augment != "none" else 1  # ≥ 1: planned so
        train_samples = list(parts.scan.splits["train"])
        val_samples = list(parts.scan.splits["val"])
        prep = parts.built.preprocessing
        key_prep = prep.to_json()
        keys = (cache_key(split, train_samples, key_prep, parts.precision, views, augment,
                          cfg.train.seed),
                cache_key(split, val_samples, key_prep, parts.precision))
        images = len(train_samples) * views + len(val_samples)
        self.report(CacheReport("features", "building", images=images,
                                detail=f"cut after {split.boundary}"))
        train_transform = build_transforms(prep, augment, train=True)
        eval_transform = build_transforms(prep)

        def batches(samples: list[Sample], transform: Any, seed: int) -> Callable[[int], Any]:
            def for_view(view: int) -> Any:
                torch.manual_seed(seed * 7919 + view)
                loader = DataLoader(FolderDataset(samples, transform),
                                    batch_size=cfg.train.batch_size, shuffle=False,
                                    generator=torch.Generator().manual_seed(seed + view),
                                    **parts.loader_settings)
                return (images for images, _ in loader)
            return for_view

        started = time.monotonic()
        autocast = parts.autocast()
        try:
            train_set, train_reused = load_or_build(
                keys[0], split.prefix, batches(train_samples, train_transform, cfg.train.seed),
                len(train_samples), views, [s.label for s in train_samples], parts.device,
                autocast, parts.channels_last, stop)
            if val_samples:
                val_set, val_reused = load_or_build(
                    keys[1], split.prefix, batches(val_samples, eval_transform, 0),
                    len(val_samples), 1, [s.label for s in val_samples], parts.device,
                    autocast, parts.channels_last, stop)
            else:
                val_set, val_reused = None, True
        except CacheStopped:
            return None
        seconds = time.monotonic() - started
        loader = parts.train_loader
        train = CachedBatches(train_set, parts.train_sampler, loader.batch_size or 1,
                              loader.drop_last, parts.generator)
        val: Any = parts.val_loader
        if val_set is not None:
            val = CachedBatches(val_set, parts.val_sampler, cfg.train.batch_size, False)
        megabytes = (train_set.nbytes + (val_set.nbytes if val_set is not None else 0)) / 1e6
        where = [f"cut after {split.boundary}", f"{share:.0%} of the computation"]
        if augment != "none":
            where.append(f"{views} augmented view{'s' if views > 1 else ''} per image")
        if train_set.path is not None:
            where.append(f"on disk in {train_set.path.parent}")
        if parts.placement.distributed:
            where.append("built by every process")
        where.extend(split.notes)
        reused = train_reused and val_reused
        self.report(CacheReport("features", "reused" if reused else "ready", images=images,
                                megabytes=megabytes, seconds=seconds, detail="; ".join(where)))
        return Feed(train, val, split.suffix)

    def _image_feed(self, epoch: int, stop: threading.Event) -> Feed | None:
        """Decode and resize every image once, keep uint8 tensors; None when stopped."""
        parts = self.parts
        if self._images is not None:
            return Feed(*self._images, parts.model)
        cfg = parts.config
        prep = parts.built.preprocessing
        train_samples = list(parts.scan.splits["train"])
        val_samples = list(parts.scan.splits["val"])
        cropped = cfg.data.augment == "none"
        need = (decoded_size_estimate(len(train_samples), prep, cropped)
                + decoded_size_estimate(len(val_samples), prep, True))
        budget = image_cache_budget() // max(1, parts.placement.local_world_size)
        refusal = None
        if cfg.train.image_cache == "off":
            refusal = "switched off"
        elif cfg.train.epochs - epoch + 1 < 2:
            refusal = "a single epoch decodes each image once anyway"
        elif need > budget:
            refusal = (f"{len(train_samples) + len(val_samples)} images need about "
                       f"{need / 1e9:.1f} GB, more than the {budget / 1e9:.1f} GB set aside")
        if refusal is not None:
            self._images = (parts.train_loader, parts.val_loader)
            self.report(CacheReport("images", "off", detail=refusal))
            return Feed(*self._images, parts.model)
        from torchvision.transforms import v2 as T

        count = len(train_samples) + len(val_samples)
        self.report(CacheReport("images", "building", images=count))
        started = time.monotonic()
        train_steps, train_tail = transform_parts(prep, cfg.data.augment, train=True)
        val_steps, val_tail = transform_parts(prep)
        train_images = decode_images(train_samples, train_steps, stop=stop)
        val_images = decode_images(val_samples, val_steps, stop=stop)
        if train_images is None or val_images is None:
            return None
        self._images = parts.make_loaders(
            DecodedDataset(train_images, train_samples, T.Compose(train_tail)),
            DecodedDataset(val_images, val_samples, T.Compose(val_tail)))
        size = (train_images.nbytes + val_images.nbytes) / 1e6
        what = "resized" if not cropped else "resized and cropped"
        self.report(CacheReport("images", "ready", images=count, megabytes=size,
                                seconds=time.monotonic() - started, detail=f"uint8, {what}"))
        return Feed(*self._images, parts.model)
