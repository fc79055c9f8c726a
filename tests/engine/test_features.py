"""The feature cache: where a model is cut, when the cache is used, when it is rebuilt, and that
training on cached features gives the results of training on images."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import studio.engine.features as features
from studio.engine.backbones import build_model
from studio.engine.checkpoint import load_checkpoint
from studio.engine.config import (
    DataConfig,
    FreezeSpec,
    ModelConfig,
    OptimConfig,
    RunConfig,
    StageSpec,
    TrainConfig,
)
from studio.engine.data import Sample
from studio.engine.events import CacheReport, Callback, Outcome
from studio.engine.features import SplitRefused, cache_key, split_model
from studio.engine.params import resolve_frozen
from studio.engine.trainer import Trainer


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with an empty in-memory cache and its own disk cache folder."""
    features.forget_memory()
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))


def split_for(backbone: str, spec: FreezeSpec, bn_frozen: bool = True,
              size: int = 32) -> tuple[torch.nn.Module, features.ModelSplit]:
    torch.manual_seed(0)
    built = build_model(ModelConfig(backbone=backbone, weights="none"), 3, size)
    model = built.model.eval()
    frozen = resolve_frozen([n for n, _ in model.named_parameters()], spec, built.head)
    return model, split_model(model, frozen, bn_frozen)


# -- cutting a model ----------------------------------------------------------------------------


@pytest.mark.parametrize("backbone,spec,boundary", [
    ("resnet18", FreezeSpec(preset="head_only"), "flatten"),
    ("resnet18", FreezeSpec(preset="up_to", up_to="layer3"), "layer3.1.relu_1"),
    ("mobilenet_v3_small", FreezeSpec(preset="head_only"), "classifier.1"),
])
def test_the_split_model_computes_what_the_model_does(backbone: str, spec: FreezeSpec,
                                                      boundary: str) -> None:
    model, split = split_for(backbone, spec)
    assert split.boundary == boundary
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(split.suffix.eval()(split.prefix(x)), model(x))
    assert not model.training, "splitting leaves every module's mode as it was"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad} - \
        set(resolve_frozen([n for n, _ in model.named_parameters()], spec,
                           build_model(ModelConfig(backbone=backbone, weights="none"), 3,
                                       32).head))
    prefix_params = {n for n, _ in split.prefix.named_parameters()}
    assert prefix_params and not prefix_params & trainable


def test_dropout_before_the_head_stays_in_the_trainable_part() -> None:
    _, split = split_for("mobilenet_v3_small", FreezeSpec(preset="head_only"))
    kinds = [type(m).__name__ for m in split.suffix.modules()]
    assert "Dropout" in kinds  # classifier.2, right before the new head: still random per step
    assert "Dropout" not in [type(m).__name__ for m in split.prefix.modules()]


def test_the_suffix_trains_the_models_own_parameters() -> None:
    model, split = split_for("resnet18", FreezeSpec(preset="head_only"))
    assert {id(p) for p in split.suffix.parameters()} == {id(model.fc.weight), id(model.fc.bias)}


@pytest.mark.parametrize("spec,bn_frozen,reason", [
    (FreezeSpec(preset="train_all"), True, "every layer trains"),
    (FreezeSpec(preset="head_only"), False, "bn_frozen is off"),
])
def test_models_that_cannot_be_cached_say_why(spec: FreezeSpec, bn_frozen: bool,
                                              reason: str) -> None:
    with pytest.raises(SplitRefused, match=reason):
        split_for("resnet18", spec, bn_frozen)


# -- the cache key ------------------------------------------------------------------------------


def test_the_key_covers_weights_cut_preprocessing_and_files(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        path.write_bytes(b"x" * (i + 1))
        files.append(Sample(str(path), i % 2))
    prep = {"resize": 36, "crop": 32}
    model, split = split_for("resnet18", FreezeSpec(preset="head_only"))
    key = cache_key(split, files, prep, "fp32")
    assert key == cache_key(split, files, dict(prep), "fp32"), "stable for the same inputs"
    assert key != cache_key(split, files, {"resize": 40, "crop": 32}, "fp32")
    assert key != cache_key(split, files, prep, "bf16")
    assert key != cache_key(split, files[:2], prep, "fp32")
    assert key != cache_key(split, [*files[:2], Sample(files[2].path, 1)], prep, "fp32")
    _, other_cut = split_for("resnet18", FreezeSpec(preset="up_to", up_to="layer3"))
    assert key != cache_key(other_cut, files, prep, "fp32")
    os.utime(files[0].path, ns=(1, 1))  # the file changed on disk
    assert key != cache_key(split, files, prep, "fp32")
    touched = cache_key(split, files, prep, "fp32")
    with torch.no_grad():
        model.layer1[0].conv1.weight.add_(1e-3)  # other weights, same architecture
    assert touched != cache_key(split, files, prep, "fp32")


# -- training on cached features ----------------------------------------------------------------


class Recorder(Callback):
    def __init__(self, kind: str = "features") -> None:
        self.kind = kind
        self.caches: list[CacheReport] = []
        self.epochs: list[Any] = []

    def on_cache(self, event: CacheReport) -> None:
        if event.kind == self.kind:
            self.caches.append(event)

    def on_epoch_end(self, event: Any) -> None:
        self.epochs.append(event)


def tiny_config(data: Path, **train: Any) -> RunConfig:
    stages = train.pop("stages", ())
    augment = train.pop("augment", "none")
    freeze = train.pop("freeze", FreezeSpec(preset="head_only"))
    return RunConfig(
        data=DataConfig(root=str(data), image_size=32, augment=augment, val_fraction=0.3),
        model=ModelConfig(backbone="resnet18", weights="none"),
        freeze=freeze, stages=stages,
        optim=OptimConfig(lr=1e-2, schedule="cosine"),
        train=TrainConfig(epochs=train.pop("epochs", 3), batch_size=4, workers=0,
                          precision="fp32", device="cpu", seed=3, deterministic=True, **train))


def fit(config: RunConfig, run_dir: Path, stop: threading.Event | None = None,
        kind: str = "features") -> tuple[Any, Recorder]:
    recorder = Recorder(kind)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Trainer(config, run_dir, [recorder]).fit(stop)
    finally:
        torch.set_num_threads(threads)
    return result, recorder


def test_cached_training_gives_the_results_of_training_on_images(tiny_dataset: Path,
                                                                  tmp_path: Path) -> None:
    cached, with_cache = fit(tiny_config(tiny_dataset), tmp_path / "cached")
    plain, without = fit(tiny_config(tiny_dataset, feature_cache="off"), tmp_path / "plain")
    assert cached.outcome is plain.outcome is Outcome.COMPLETED
    assert [c.state for c in with_cache.caches] == ["building", "ready"]
    assert with_cache.caches[-1].images == 30 and "flatten" in with_cache.caches[-1].detail
    assert [(c.state, c.detail) for c in without.caches] == [("off", "switched off")]
    for a, b in zip(with_cache.epochs, without.epochs, strict=True):
        assert a.val_acc == b.val_acc
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4, abs=1e-6)
    state_a = load_checkpoint(tmp_path / "cached" / "checkpoints" / "last.pt")["model"]
    state_b = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    for name, value in state_a.items():
        torch.testing.assert_close(value, state_b[name], rtol=1e-4, atol=1e-5)
    lines = [json.loads(line) for line in
             (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()]
    assert any(line["event"] == "cache" and line["state"] == "ready" for line in lines)


def test_a_second_run_reuses_the_features_and_a_change_rebuilds_them(
        tiny_dataset: Path, tmp_path: Path, make_tiny_dataset: Callable[..., Path]) -> None:
    fit(tiny_config(tiny_dataset, epochs=2), tmp_path / "one")
    _, again = fit(tiny_config(tiny_dataset, epochs=2), tmp_path / "two")
    assert again.caches[-1].state == "reused"
    data = make_tiny_dataset(tmp_path / "data", per_class=10, size=16)
    _, same_files = fit(tiny_config(data, epochs=2), tmp_path / "three")
    assert same_files.caches[-1].state == "ready", "other files (paths) are other features"
    shutil.copy(data / "red" / "red_00.png", data / "red" / "red_extra.png")
    _, added = fit(tiny_config(data, epochs=2), tmp_path / "four")
    assert added.caches[-1].state == "ready" and added.caches[-1].images == 31


def test_augmented_images_are_not_cached_unless_views_are_asked_for(tiny_dataset: Path,
                                                                    tmp_path: Path) -> None:
    _, plain = fit(tiny_config(tiny_dataset, epochs=2, augment="light"), tmp_path / "a")
    assert plain.caches[-1].state == "off" and "cache_views" in plain.caches[-1].detail
    result, views = fit(tiny_config(tiny_dataset, epochs=2, augment="light", cache_views=3),
                        tmp_path / "b")
    assert result.outcome is Outcome.COMPLETED
    report = views.caches[-1]
    assert report.state == "ready" and report.images == 21 * 3 + 9
    assert "3 augmented views" in report.detail


def test_large_feature_sets_are_not_kept_after_the_fit(tiny_dataset: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "KEEP_BYTES", 10)  # bytes: nothing is small enough to keep
    fit(tiny_config(tiny_dataset, epochs=2), tmp_path / "a")
    _, again = fit(tiny_config(tiny_dataset, epochs=2), tmp_path / "b")
    assert again.caches[-1].state == "ready"


def test_large_feature_sets_spill_to_disk_and_are_found_there_again(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "MEMORY_CAP", 1024)  # bytes: anything spills
    result, first = fit(tiny_config(tiny_dataset, epochs=2), tmp_path / "a")
    assert result.outcome is Outcome.COMPLETED
    assert "on disk" in first.caches[-1].detail
    stored = list((tmp_path / "cache" / "features").glob("*.bin"))
    assert len(stored) == 2  # train and val
    features.forget_memory()
    _, second = fit(tiny_config(tiny_dataset, epochs=2), tmp_path / "b")
    assert second.caches[-1].state == "reused"


def test_head_first_on_cached_features_then_unfreeze_on_images(tiny_dataset: Path,
                                                              tmp_path: Path) -> None:
    stages = (StageSpec(epoch=3, freeze=FreezeSpec(preset="train_all")),)
    result, recorder = fit(tiny_config(tiny_dataset, epochs=4, stages=stages), tmp_path / "r")
    assert result.outcome is Outcome.COMPLETED
    assert [c.state for c in recorder.caches] == ["building", "ready", "off"]
    assert recorder.caches[-1].detail == "every layer trains"
    assert len(recorder.epochs) == 4


def test_a_single_epoch_is_not_worth_caching(tiny_dataset: Path, tmp_path: Path) -> None:
    _, recorder = fit(tiny_config(tiny_dataset, epochs=1), tmp_path / "r")
    assert recorder.caches[-1].state == "off" and "single epoch" in recorder.caches[-1].detail


def test_stop_while_the_cache_is_built_cancels_the_fit(tiny_dataset: Path,
                                                     tmp_path: Path) -> None:
    stop = threading.Event()

    class StopWhenBuilding(Recorder):
        def on_cache(self, event: CacheReport) -> None:
            if event.state == "building":
                stop.set()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Trainer(tiny_config(tiny_dataset), tmp_path / "r",
                         [StopWhenBuilding()]).fit(stop)
    finally:
        torch.set_num_threads(threads)
    assert result.outcome is Outcome.CANCELLED


# -- the decoded-image cache --------------------------------------------------------------------


def test_decoded_images_give_the_eval_tensors_bit_for_bit(tiny_dataset: Path) -> None:
    from torchvision.transforms import v2 as T

    from studio.engine.images import (
        DecodedDataset,
        FolderDataset,
        Preprocessing,
        build_transforms,
        decode_images,
        transform_parts,
    )

    samples = [Sample(str(p), i % 3) for i, p in enumerate(sorted(tiny_dataset.glob("*/*.png")))]
    prep = Preprocessing(36, 32)
    steps, tail = transform_parts(prep)
    decoded = decode_images(samples, steps)
    assert decoded is not None and decoded.nbytes == len(samples) * 3 * 32 * 32
    cached = DecodedDataset(decoded, samples, T.Compose(tail))
    plain = FolderDataset(samples, build_transforms(prep))
    for i in (0, 7, len(samples) - 1):
        assert torch.equal(cached[i][0], plain[i][0]) and cached[i][1] == plain[i][1]
    stop = threading.Event()
    stop.set()
    assert decode_images(samples, steps, stop=stop) is None


def test_training_from_decoded_images_matches_training_from_files(tiny_dataset: Path,
                                                                  tmp_path: Path) -> None:
    on, with_cache = fit(tiny_config(tiny_dataset, epochs=2, feature_cache="off",
                                     freeze=FreezeSpec()), tmp_path / "on", kind="images")
    off, without = fit(tiny_config(tiny_dataset, epochs=2, feature_cache="off",
                                   image_cache="off", freeze=FreezeSpec()), tmp_path / "off",
                       kind="images")
    images = with_cache.caches
    assert [c.state for c in images] == ["building", "ready"] and images[-1].images == 30
    assert [c.state for c in without.caches] == ["off"]
    for a, b in zip(with_cache.epochs, without.epochs, strict=True):
        assert a.train_loss == b.train_loss and a.val_acc == b.val_acc


def test_images_that_do_not_fit_are_read_from_disk(tiny_dataset: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import studio.engine.caching as caching

    monkeypatch.setattr(caching, "image_cache_budget", lambda: 1000)
    result, recorder = fit(tiny_config(tiny_dataset, epochs=2, feature_cache="off"),
                           tmp_path / "r", kind="images")
    assert result.outcome is Outcome.COMPLETED
    report = recorder.caches[-1]
    assert report.state == "off" and "more than the" in report.detail


def test_compile_wraps_what_trains(tiny_dataset: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """train.compile hands the module that runs each step to torch.compile: the whole model,
    or the trainable suffix when features are cached. (A spy: compiling a resnet on 2 CPU cores
    takes minutes; the compiled path itself is exercised by hand and on GPU machines.)"""
    compiled: list[str] = []

    def spy(module: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        compiled.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", spy)
    result, _ = fit(tiny_config(tiny_dataset, epochs=2, compile=True), tmp_path / "a")
    assert result.outcome is Outcome.COMPLETED
    assert compiled == ["TrainableSuffix"]  # features cached: only the suffix runs
    compiled.clear()
    result, _ = fit(tiny_config(tiny_dataset, epochs=2, compile=True, feature_cache="off"),
                    tmp_path / "b")
    assert result.outcome is Outcome.COMPLETED
    assert compiled == ["ResNet"]


# -- the cache with the trainer's other features ------------------------------------------------


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_a_cached_run_stopped_and_resumed_matches_an_unbroken_one(tiny_dataset: Path,
                                                                 tmp_path: Path) -> None:
    config = tiny_config(tiny_dataset, epochs=4)
    full, _ = fit(config, tmp_path / "full")
    stop = threading.Event()

    class StopAfterTwo(Recorder):
        def on_epoch_end(self, event: Any) -> None:
            if event.epoch == 2:
                stop.set()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cancelled = Trainer(config, tmp_path / "run", [StopAfterTwo()]).fit(stop)
        features.forget_memory()  # as after restarting the app: the features are rebuilt
        recorder = Recorder()
        resumed = Trainer.resume_run(tmp_path / "run", callbacks=[recorder]).fit()
    finally:
        torch.set_num_threads(threads)
    assert cancelled.outcome is Outcome.CANCELLED and cancelled.epochs_completed == 2
    assert resumed.outcome is Outcome.COMPLETED and full.outcome is Outcome.COMPLETED
    assert recorder.caches[-1].state == "ready"
    unbroken, again = final_weights(tmp_path / "full"), final_weights(tmp_path / "run")
    assert all(torch.equal(unbroken[k], again[k]) for k in unbroken)


def test_the_weighted_sampler_draws_the_same_batches_from_cached_features(
        tiny_dataset: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    def balanced(**train: Any) -> RunConfig:
        config = tiny_config(tiny_dataset, epochs=2, **train)
        return config.replace(data=replace(config.data, balance="sampler"))

    _, cached = fit(balanced(), tmp_path / "cached")
    _, plain = fit(balanced(feature_cache="off"), tmp_path / "plain")
    assert cached.caches[-1].state == "ready"
    assert [e.train_loss for e in cached.epochs] == pytest.approx(
        [e.train_loss for e in plain.epochs], rel=1e-4)


def test_no_validation_images_with_cached_features(tiny_dataset: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    config = tiny_config(tiny_dataset, epochs=2)
    config = config.replace(data=replace(config.data, val_fraction=0.0))
    result, recorder = fit(config, tmp_path / "r")
    assert result.outcome is Outcome.COMPLETED
    assert recorder.caches[-1].state == "ready" and recorder.caches[-1].images == 30
