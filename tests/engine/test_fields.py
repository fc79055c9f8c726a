"""Config fields declare label, help, choices and limits once; the config checks itself from
them and `studio train` gets one flag per field from them."""

from __future__ import annotations

import pytest

from studio.cli import build_parser
from studio.cli.train import config_from_args
from studio.engine.config import (
    SECTIONS,
    ConfigError,
    OptimConfig,
    RunConfig,
    TrainConfig,
    all_described,
)
from studio.engine.fields import TABS, limits


def test_every_setting_is_complete_and_its_default_is_allowed() -> None:
    items = all_described()
    assert len(items) > 30
    for item in items:
        found = item.setting
        assert found.label and found.help.endswith("."), item.key
        assert found.tab in ("", *TABS), item.key
        if found.choices:
            assert item.default in found.values, item.key
        elif item.kind in (int, float) and item.default is not None:
            assert found.low is not None and found.high is not None, item.key
            assert found.low <= item.default <= found.high, item.key
    assert set(SECTIONS) == {item.section for item in items}


@pytest.mark.parametrize(("section", "changes", "message"), [
    ("train", {"mixup": 11.0}, "mixup must be between 0 and 10"),
    ("train", {"accumulate": 0}, "accumulate must be between 1 and 4096; got 0"),
    ("train", {"workers": -2}, "workers must be between -1 and 256; got -2"),
    ("train", {"monitor": "f1"}, "monitor must be one of val_acc, val_loss, macro_f1, "
                                 "balanced_acc; got 'f1'"),
    ("optim", {"momentum": 1.5}, "momentum must be between 0 and 0.999; got 1.5"),
    ("optim", {"warmup_epochs": float("inf")}, "warmup_epochs must be a finite number"),
])
def test_a_value_outside_its_declared_limits_is_refused_naming_the_field(
        section: str, changes: dict, message: str) -> None:
    cls = {"train": TrainConfig, "optim": OptimConfig}[section]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        cls(**changes)


def test_limits_are_read_from_the_declaration() -> None:
    assert limits(OptimConfig, "lr") == (0.0, 10.0)
    assert limits(TrainConfig, "batch_size") == (1, 65_536)


def test_every_field_with_a_flag_reaches_the_config_from_the_command_line() -> None:
    parser = build_parser()
    args = parser.parse_args([
        "train", "--label-smoothing", "0.1", "--no-channels-last", "--head", "mlp",
        "--head-dropout", "0.5", "--nesterov", "--gamma", "0.5", "--mix-until", "3",
        "--monitor", "macro_f1", "--augment", "light", "--no-tensorboard", "--step-size", "4"])
    config = config_from_args(args)
    assert config.train.label_smoothing == 0.1 and config.train.channels_last is False
    assert config.model.head.kind == "mlp" and config.model.head.dropout == 0.5
    assert config.optim.nesterov is True and config.optim.gamma == 0.5
    assert config.optim.step_size == 4 and config.train.mix_until == 3
    assert config.train.monitor == "macro_f1" and config.data.augment == "light"
    assert config.train.tensorboard is False
    untouched = RunConfig()
    assert config.train.epochs == untouched.train.epochs  # a flag not given leaves the field
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for item in all_described():
        if item.flag is not None:
            assert f"--{item.flag}" in help_text, item.key


def test_a_bad_flag_value_names_the_flag() -> None:
    args = build_parser().parse_args(["train", "--head-dropout", "2"])
    with pytest.raises(ConfigError, match="--head-dropout: dropout must be between 0 and 0.99"):
        config_from_args(args)
