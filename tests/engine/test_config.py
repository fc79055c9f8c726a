"""RunConfig: TOML round-trip, atomic save, schema_version, and errors that name the field."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from studio.engine import config as config_module
from studio.engine.config import (
    SCHEMA_VERSION,
    DataConfig,
    FreezeSpec,
    HeadConfig,
    ModelConfig,
    OptimConfig,
    ParamGroupSpec,
    RunConfig,
    StageSpec,
    TrainConfig,
)
from studio.engine.errors import ConfigError


def full_config(image_size: int | None = 160) -> RunConfig:
    """A config with a non-default value in every field."""
    return RunConfig(
        data=DataConfig(root="/data/flowers", val_fraction=0.15, augment="strong",
                        balance="sampler", image_size=image_size),
        model=ModelConfig(backbone="convnext_tiny", weights="/weights/convnext tiny.safetensors",
                          head=HeadConfig(kind="mlp", hidden=256, dropout=0.3)),
        freeze=FreezeSpec(preset="up_to", up_to="features.3", freeze=("*.bias",),
                          unfreeze=("features.3.1", "classifier.0"), bn_frozen=False),
        optim=OptimConfig(
            optimizer="sgd", lr=0.05, weight_decay=5e-4, momentum=0.8, nesterov=True,
            groups=(ParamGroupSpec("stem", ("features.0", "features.1"), lr=1e-4,
                                   weight_decay=0.0),
                    ParamGroupSpec("head", ("classifier.2",), lr=0.05)),
            schedule="onecycle", warmup_epochs=1.5, step_size=3, gamma=0.5),
        stages=(StageSpec(epoch=3, freeze=FreezeSpec(preset="head_only", unfreeze=("features.7",)),
                          lr_scale={"head": 0.5, "*": 0.1}),
                StageSpec(epoch=6)),
        train=TrainConfig(epochs=12, batch_size=16, loss="focal", label_smoothing=0.1,
                          grad_clip=1.0, accumulate=4, early_stopping=3, monitor="val_loss",
                          device="cpu", precision="bf16", channels_last=False, workers=0,
                          seed=1234, deterministic=True, feature_cache="off",
                          cache_views=2, image_cache="off", compile=True, processes=4,
                          sync_bn=True, tensorboard=False, mixup=0.2, cutmix=1.0,
                          mix_prob=0.5, mix_switch=0.3, mix_until=5, ema=0.999,
                          ema_warmup=False),
    )


SECTIONS = ["data", "model", "freeze", "optim", "train"]


def test_full_config_sets_every_field() -> None:
    """Guards the round-trip test: a field added later must be given a non-default value here."""
    cfg, default = full_config(), RunConfig()
    assert cfg.stages != default.stages
    for section in SECTIONS:
        ours, theirs = getattr(cfg, section), getattr(default, section)
        for f in dataclasses.fields(ours):
            assert getattr(ours, f.name) != getattr(theirs, f.name), f"{section}.{f.name}"
    assert cfg.model.head.kind != "linear" and cfg.model.head.hidden != 512
    assert cfg.model.head.dropout != HeadConfig().dropout


@pytest.mark.parametrize("image_size", [160, None])
def test_toml_round_trip(image_size: int | None) -> None:
    cfg = full_config(image_size)
    text = cfg.to_toml()
    assert f"schema_version = {SCHEMA_VERSION}" in text
    assert ("image_size" in text) == (image_size is not None)  # TOML has no null: left out
    back = RunConfig.from_toml(text)
    assert back == cfg
    assert back.optim.groups[0].weight_decay == 0.0
    assert back.optim.groups[1].weight_decay is None
    assert back.stages[0].lr_scale == {"head": 0.5, "*": 0.1}
    assert back.stages[1].lr_scale == {}
    assert back.data.image_size == image_size


def test_default_config_round_trips() -> None:
    assert RunConfig.from_toml(RunConfig().to_toml()) == RunConfig()
    assert RunConfig.from_dict(RunConfig().to_dict()) == RunConfig()


def test_a_minimal_file_fills_in_defaults() -> None:
    cfg = RunConfig.from_toml('schema_version = 1\n[train]\nepochs = 3\n[optim]\nlr = 1\n')
    assert cfg == RunConfig(train=TrainConfig(epochs=3), optim=OptimConfig(lr=1.0))
    assert isinstance(cfg.optim.lr, float)  # a whole number where a number goes is fine


def test_save_and_load(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "flowers.toml"  # the folder is created
    cfg = full_config()
    cfg.save(path)
    assert RunConfig.load(path) == cfg
    assert os.listdir(path.parent) == ["flowers.toml"]
    changed = cfg.replace(train=dataclasses.replace(cfg.train, epochs=30))
    changed.save(str(path))
    assert RunConfig.load(str(path)) == changed
    assert os.listdir(path.parent) == ["flowers.toml"]  # no temporary files left behind


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.toml"
    RunConfig().save(path)
    before = path.read_bytes()

    def fail(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(config_module.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        full_config().save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["run.toml"]


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=r"missing\.toml does not exist"):
        RunConfig.load(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("schema_version = 1\n[train\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        RunConfig.load(broken)
    invalid = tmp_path / "invalid.toml"
    invalid.write_text("schema_version = 1\n[train]\nepochs = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError,
                       match=r"invalid\.toml: train\W+epochs must be between 1 and 100000"):
        RunConfig.load(invalid)


# ---------------------------------------------------------------------------------------------
# schema_version


def test_missing_schema_version_is_an_error() -> None:
    with pytest.raises(ConfigError, match="schema_version is missing"):
        RunConfig.from_toml("[train]\nepochs = 3\n")
    with pytest.raises(ConfigError, match="schema_version is missing"):
        RunConfig.from_dict({})


def test_newer_schema_version_asks_to_upgrade() -> None:
    newer = SCHEMA_VERSION + 1
    with pytest.raises(ConfigError, match=f"schema_version {newer}, newer.*upgrade"):
        RunConfig.from_toml(f"schema_version = {newer}\n")


@pytest.mark.parametrize("value", ['"1"', "0", "1.0"])
def test_schema_version_must_be_a_positive_integer(value: str) -> None:
    with pytest.raises(ConfigError, match="schema_version must be a positive integer"):
        RunConfig.from_toml(f"schema_version = {value}\n")


# ---------------------------------------------------------------------------------------------
# Validation names the field by its dotted path


GROUPS = 'groups = [{name = "a", patterns = ["x"], lr = 0.1}, '


@pytest.mark.parametrize("body, message", [
    (f'[optim]\n{GROUPS}{{name = "b", patterns = ["y"], lr = -1.0}}]',
     r"optim\.groups\[1\]\W+lr must be at least 0(\.0)?; got -1"),
    ("[train]\nepochs = 0", r"train\W+epochs must be between 1 and 100000; got 0"),
    ("[data]\nval_fraction = 1.5", r"data\W+val_fraction must be between 0 and 0\.9; got 1\.5"),
    ("[data]\nimage_size = 8", r"data\W+image_size must be between 16 and 2048"),
    ("[data]\nimage_size = 224.5", r"data\.image_size must be a whole number; got 224\.5"),
    ('[model]\nbakcbone = "resnet18"',
     r"unknown field 'model\.bakcbone'.*known fields are backbone, head, weights"),
    ("surprise = 1", r"unknown field 'surprise'"),
    ('[train]\nbatch_size = "big"', r"train\.batch_size must be a whole number; got 'big'"),
    ('[train]\ndeterministic = "yes"', r"train\.deterministic must be true or false"),
    ("[optim]\nlr = true", r"optim\.lr must be a number; got True"),
    ('[optim]\noptimizer = "lion"',
     r"optim\W+optimizer must be one of sgd, adam, adamw; got 'lion'"),
    ('[freeze]\nfreeze = "layer1"', r"freeze\.freeze must be a list"),
    ('[freeze]\npreset = "up_to"', r"freeze\W+up_to must name a module"),
    ('model = "resnet18"', r"model must be a table"),
    (f'[optim]\n{GROUPS}{{name = "a", patterns = ["y"], lr = 0.2}}]',
     r"optim\W+parameter group names must be unique; repeated: \['a'\]"),
    ('[optim]\ngroups = [{name = "a", patterns = ["x"]}]', r"optim\.groups\[0\]\.lr is required"),
    ("[[stages]]\nepoch = 3\n[[stages]]\nepoch = 2",
     r"stages must have increasing, distinct epochs; got \[3, 2\]"),
    ("[[stages]]\nepoch = 3\n[[stages]]\nepoch = 3",
     r"stages must have increasing, distinct epochs; got \[3, 3\]"),
    ("[[stages]]\nepoch = 1", r"stages\[0\]\W+a stage's epoch must be 2 or later"),
    ("[[stages]]\nepoch = 3\nlr_scale = {head = -1.0}",
     r"stages\[0\]\W+lr_scale\['head'\] must be at least 0"),
])
def test_validation_errors_name_the_field(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^run.toml: {message}"):
        RunConfig.from_toml(f"schema_version = 1\n{body}\n", source="run.toml")


def test_invalid_toml_names_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^my_run\.toml is not valid TOML: .*line 2"):
        RunConfig.from_toml("schema_version = 1\nepochs = = 3\n", source="my_run.toml")


@pytest.mark.parametrize("build, message", [
    (lambda: TrainConfig(epochs=0), "epochs must be between 1 and 100000; got 0"),
    (lambda: TrainConfig(batch_size=0), "batch_size must be between 1 and 65536"),
    (lambda: DataConfig(val_fraction=float("nan")), "val_fraction must be a finite number"),
    (lambda: HeadConfig(kind="transformer"), "kind must be one of linear, mlp"),
    (lambda: OptimConfig(lr=0.0), "lr must be greater than 0"),
    (lambda: ParamGroupSpec("a", ("x",), lr=-1e-3), "lr must be at least 0"),
    (lambda: ParamGroupSpec("", ("x",), lr=1e-3), "a parameter group needs a name"),
    (lambda: FreezeSpec(preset="bottom"), "preset must be one of train_all, head_only, up_to"),
    (lambda: StageSpec(epoch=1), "epoch must be 2 or later"),
    (lambda: RunConfig(stages=(StageSpec(epoch=4), StageSpec(epoch=3))),
     r"increasing, distinct epochs; got \[4, 3\]"),
])
def test_direct_construction_validates(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_replace_validates_and_configs_are_immutable() -> None:
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="increasing, distinct"):
        cfg.replace(stages=(StageSpec(epoch=3), StageSpec(epoch=3)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 5  # type: ignore[misc]
    assert cfg.replace(train=TrainConfig(epochs=5)).train.epochs == 5
    assert cfg.train.epochs == 10


def test_too_many_epochs_names_the_upper_bound() -> None:
    with pytest.raises(ConfigError, match=r"(at most|and) 100[,_]?000\b"):
        TrainConfig(epochs=1_000_000)
