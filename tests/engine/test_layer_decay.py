"""Layer-wise learning-rate decay: layer ids, the groups' rates, the CLI flag, the optimizer."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from torch import nn

from studio.cli import build_parser
from studio.cli.train import config_from_args
from studio.engine.backbones import ModelDescription, describe_model
from studio.engine.config import ConfigError, ModelConfig, RunConfig
from studio.engine.layer_decay import description_layer_decay, layer_decay_groups, layer_ids
from studio.engine.params import assign_groups, optimizer_groups

BASE = 1e-3
RATE = 0.5
BACKBONES = ["vit_b_16", "swin_t", "convnext_tiny", "maxvit_t", "resnet18"]


@pytest.fixture(scope="module", params=BACKBONES)
def described(request: pytest.FixtureRequest) -> ModelDescription:
    return describe_model(ModelConfig(backbone=request.param, weights="none"), 3)


def test_rates_follow_the_formula_from_the_head_down(described: ModelDescription) -> None:
    groups = description_layer_decay(described, BASE, RATE)
    assert groups[-1].name == "head"
    assert groups[-1].lr == BASE
    top = len(groups) - 1
    for depth, group in enumerate(reversed(groups)):
        assert group.lr == pytest.approx(BASE * RATE ** depth)
    assert [g.name for g in groups[:-1]] == [f"layer_{i}" for i in range(top)]


def test_every_parameter_is_in_exactly_one_group(described: ModelDescription) -> None:
    groups = description_layer_decay(described, BASE, RATE)
    assignment = assign_groups(described.names, groups)
    assert "default" not in assignment.order and not assignment.empty
    for name in described.names:
        hits = [g.name for g in groups
                if any(name == p or name.startswith(p + ".") for p in g.patterns)]
        assert len(hits) == 1, name
    assert all(assignment.group_of[n] == "head" for n in described.names
               if n.startswith(described.head + ".") or n == described.head)


def test_depth_grows_monotonically_from_stem_to_head(described: ModelDescription) -> None:
    ids = layer_ids(described.names, described.numel, described.head,
                    {"vit_b_16": "vision_transformer", "swin_t": "swin_transformer",
                     "convnext_tiny": "convnext", "maxvit_t": "maxvit"}.get(described.backbone,
                                                                            ""))
    in_order = [ids[n] for n in described.names]
    assert in_order == sorted(in_order)  # registration order is stem → head
    assert ids[described.names[-1]] == max(ids.values())


@pytest.mark.parametrize(("backbone", "expected"), [
    ("vit_b_16", {"layer_0": ("class_token", "conv_proj", "encoder.pos_embedding"),
                  "layer_1": ("encoder.layers.encoder_layer_0",),
                  "layer_12": ("encoder.layers.encoder_layer_11",),
                  "head": ("encoder.ln", "heads")}),
    ("swin_t", {"layer_0": ("features.0",), "layer_3": ("features.2", "features.3.0"),
                "layer_12": ("features.7.1",), "head": ("norm", "head")}),
    ("convnext_tiny", {"layer_0": ("features.0",), "layer_4": ("features.2", "features.3.0"),
                       "layer_18": ("features.7.2",), "head": ("classifier",)}),
    ("maxvit_t", {"layer_0": ("stem",), "layer_1": ("blocks.0.layers.0",),
                  "layer_11": ("blocks.3.layers.1",), "head": ("classifier",)}),
    ("resnet18", {"layer_0": ("conv1", "bn1"), "layer_1": ("layer1",), "layer_4": ("layer4",),
                  "head": ("fc",)}),
])
def test_layers_are_the_blocks_timm_would_pick(backbone: str,
                                               expected: dict[str, tuple[str, ...]]) -> None:
    description = describe_model(ModelConfig(backbone=backbone, weights="none"), 3)
    patterns = {g.name: g.patterns for g in description_layer_decay(description, BASE)}
    for name, want in expected.items():
        assert patterns[name] == want


@pytest.mark.parametrize("rate", [0.0, -0.5, 1.5])
def test_a_rate_outside_0_to_1_is_refused(rate: float) -> None:
    with pytest.raises(ConfigError, match="layer decay rate"):
        layer_decay_groups(["a.weight", "fc.weight"], {"a.weight": 1, "fc.weight": 1}, "fc",
                           BASE, rate)


def test_a_rate_of_one_keeps_every_layer_at_the_base_rate() -> None:
    description = describe_model(ModelConfig(backbone="resnet18", weights="none"), 3)
    assert {g.lr for g in description_layer_decay(description, BASE, 1.0)} == {BASE}


def test_the_optimizer_gets_the_layer_rates() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()),
                          nn.Sequential(nn.Conv2d(4, 4, 3)), nn.Flatten(), nn.Linear(4, 2))
    named = dict(model.named_parameters())
    names = list(named)
    groups = layer_decay_groups(names, {n: p.numel() for n, p in named.items()}, "4", BASE,
                                RATE)
    optim = optimizer_groups(model, {"0.weight", "0.bias"}, groups, BASE, 0.0)
    lrs = {g["name"]: g["lr"] for g in optim}
    assert lrs == {"layer_1": pytest.approx(BASE * RATE ** 2),
                   "layer_2": pytest.approx(BASE * RATE), "head": BASE}
    assert sum(len(g["params"]) for g in optim) == len(names) - 2  # frozen ones left out


def _args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "--data", "somewhere", *flags])


def test_the_cli_flag_writes_the_groups_into_the_config(tmp_path: Path) -> None:
    config = config_from_args(_args("--backbone", "convnext_tiny", "--base-lr", "2e-3",
                                    "--layer-decay", "0.8"))
    groups = config.optim.groups
    assert [g.name for g in groups][-1] == "head" and len(groups) == 20
    assert groups[-1].lr == pytest.approx(2e-3)
    assert groups[0].lr == pytest.approx(2e-3 * 0.8 ** 19)
    config.save(tmp_path / "config.toml")
    assert RunConfig.load(tmp_path / "config.toml").optim.groups == groups


@pytest.mark.parametrize(("flags", "message"), [
    (("--layer-decay", "0.7", "--lr", "fc=1e-2"), "--layer-decay and --lr both"),
    (("--layer-decay", "1.2"), "--layer-decay: the layer decay rate must be above 0"),
])
def test_the_cli_flag_refuses_with_one_sentence(flags: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_args(_args("--backbone", "resnet18", *flags))
