"""Parameters: the layer tree, freeze specs, parameter groups, discriminative LRs and stages."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest
import torch
from torch import nn

from studio.engine.backbones import BuiltModel, build_model
from studio.engine.config import FreezeSpec, ModelConfig, ParamGroupSpec, StageSpec
from studio.engine.errors import ConfigError
from studio.engine.params import (
    DEFAULT_GROUP,
    ParamNode,
    apply_freeze,
    assign_groups,
    compress,
    count_params,
    default_groups,
    discriminative,
    frozen_norm_modules,
    gradual_unfreezing,
    is_under,
    matches,
    optimizer_groups,
    param_tree,
    resolve_frozen,
    set_frozen_norms_eval,
    spec_for_frozen,
    stage_at,
)

FAMILIES = ["resnet18", "mobilenet_v3_small", "vit_b_32", "convnext_tiny"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(c_in, c_out, 3, padding=1),
                                     bn=nn.BatchNorm2d(c_out), act=nn.ReLU()))


def tiny_net() -> nn.Sequential:
    """stem → features.0, features.1 → head; registration order is not alphabetical order."""
    return nn.Sequential(OrderedDict(
        stem=_block(3, 4),
        features=nn.Sequential(_block(4, 8), _block(8, 8)),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        head=nn.Linear(8, 2),
    ))


def names_of(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def under(names: list[str], *modules: str) -> set[str]:
    return {n for n in names if any(is_under(n, m) for m in modules)}


@pytest.fixture(scope="module")
def resnet() -> BuiltModel:
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="resnet18", weights="none"), num_classes=3)


def built_on_meta(backbone: str) -> BuiltModel:
    """Names and sizes without allocating or initialising weights: all grouping needs."""
    with torch.device("meta"):
        return build_model(ModelConfig(backbone=backbone, weights="none"), num_classes=3)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> BuiltModel:
    return built_on_meta(request.param)


# ---------------------------------------------------------------------------------------------
# The tree


def test_param_tree_mirrors_the_modules_in_registration_order() -> None:
    model = tiny_net()
    root = param_tree(model)
    assert [child.label for child in root.children] == ["stem", "features", "head"]
    features = root.find("features")
    assert features is not None and not features.is_leaf
    assert [child.name for child in features.children] == ["features.0", "features.1"]
    block = root.find("features.0")
    assert block is not None
    assert [child.label for child in block.children] == ["conv", "bn"]  # act has no parameters
    conv = root.find("features.0.conv")
    assert conv is not None
    assert [(leaf.label, leaf.shape, leaf.numel) for leaf in conv.children] == [
        ("weight", (8, 4, 3, 3), 288), ("bias", (8,), 8)]
    assert [leaf.name for leaf in root.leaves()] == names_of(model)


def test_param_tree_counts_add_up() -> None:
    model = tiny_net()
    root = param_tree(model)
    assert root.numel == sum(p.numel() for p in model.parameters())

    def check(node: ParamNode) -> None:
        if node.is_leaf:
            assert node.children == []
            assert node.numel == model.get_parameter(node.name).numel()
        else:
            assert node.numel == sum(child.numel for child in node.children)
            for child in node.children:
                check(child)

    check(root)
    head = root.find("head")
    assert head is not None and head.numel == 8 * 2 + 2


def test_param_tree_of_resnet18_counts_every_parameter(resnet: BuiltModel) -> None:
    root = param_tree(resnet.model)
    assert root.numel == sum(p.numel() for p in resnet.model.parameters())
    assert [child.name for child in root.children] == [
        "conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert [leaf.name for leaf in root.leaves()] == names_of(resnet.model)
    fc = root.find("fc.weight")
    assert fc is not None and fc.shape == (3, 512)


def test_find_returns_the_node_or_none() -> None:
    root = param_tree(tiny_net())
    assert root.find("") is root
    leaf = root.find("stem.bn.bias")
    assert leaf is not None and leaf.is_leaf and leaf.shape == (4,)
    assert root.find("stem.missing") is None
    assert root.find("features.2") is None
    assert root.find("feat") is None  # a prefix of a name is not a module


# ---------------------------------------------------------------------------------------------
# Freeze specs


def test_presets_train_all_and_head_only() -> None:
    names = names_of(tiny_net())
    assert resolve_frozen(names, FreezeSpec(), "head") == frozenset()
    head_only = resolve_frozen(names, FreezeSpec(preset="head_only"), "head")
    assert head_only == set(names) - {"head.weight", "head.bias"}


def test_up_to_freezes_the_module_and_everything_before_it() -> None:
    names = names_of(tiny_net())
    up_to = resolve_frozen(names, FreezeSpec(preset="up_to", up_to="features.0"), "head")
    assert up_to == under(names, "stem", "features.0")
    assert up_to == set(names[:8])  # a prefix of named_parameters() order
    assert resolve_frozen(names, FreezeSpec(preset="up_to", up_to="stem.bn"), "head") == \
        under(names, "stem")
    just_one = resolve_frozen(names, FreezeSpec(preset="up_to", up_to="stem.conv.weight"), "head")
    assert just_one == {"stem.conv.weight"}


def test_up_to_on_resnet18_leaves_the_head_trainable(resnet: BuiltModel) -> None:
    names = names_of(resnet.model)
    frozen = resolve_frozen(names, FreezeSpec(preset="up_to", up_to="layer2"), resnet.head)
    assert frozen == under(names, "conv1", "bn1", "layer1", "layer2")
    frozen = resolve_frozen(names, FreezeSpec(preset="up_to", up_to="layer4"), resnet.head)
    assert frozen == set(names) - under(names, "fc")


def test_freeze_globs_then_unfreeze_globs() -> None:
    names = names_of(tiny_net())
    spec = FreezeSpec(freeze=("features",), unfreeze=("*.bn",))
    assert resolve_frozen(names, spec, "head") == under(names, "features.0.conv", "features.1.conv")
    # unfreeze comes last, so it wins over freeze
    assert resolve_frozen(names, FreezeSpec(freeze=("stem",), unfreeze=("stem",)), "head") == set()
    # freeze adds to a preset, unfreeze removes from it
    spec = FreezeSpec(preset="head_only", freeze=("head.bias",), unfreeze=("features.1",))
    assert resolve_frozen(names, spec, "head") == under(names, "stem", "features.0", "head.bias")
    assert resolve_frozen(names, FreezeSpec(freeze=("*.bias",)), "head") == {
        n for n in names if n.endswith(".bias")}


def test_a_module_name_is_a_prefix_pattern(resnet: BuiltModel) -> None:
    names = names_of(resnet.model)
    layer1 = resolve_frozen(names, FreezeSpec(freeze=("layer1",)), resnet.head)
    assert layer1 == {n for n in names if n.startswith("layer1.")}
    assert len(layer1) == 12
    first_bns = resolve_frozen(names, FreezeSpec(freeze=("layer*.0.bn1",)), resnet.head)
    assert first_bns == {f"layer{i}.0.bn1.{p}" for i in range(1, 5) for p in ("weight", "bias")}


@pytest.mark.parametrize("spec, pattern", [
    (FreezeSpec(freeze=("layer9",)), "layer9"),
    (FreezeSpec(freeze=("layer",)), "layer"),  # part of a module name is not a module
    (FreezeSpec(preset="head_only", unfreeze=("layer4.2",)), "layer4.2"),
    (FreezeSpec(preset="up_to", up_to="layer9"), "layer9"),
])
def test_a_pattern_matching_nothing_is_an_error_naming_it(resnet: BuiltModel, spec: FreezeSpec,
                                                          pattern: str) -> None:
    names = names_of(resnet.model)
    with pytest.raises(ConfigError, match=f"'{pattern}'"):
        resolve_frozen(names, spec, resnet.head)


def test_spec_for_frozen_round_trips_random_subsets(resnet: BuiltModel) -> None:
    names = names_of(resnet.model)
    rng = random.Random(1234)
    for _ in range(40):
        subset = set(rng.sample(names, rng.randrange(len(names) + 1)))
        spec = spec_for_frozen(names, subset, resnet.head)
        assert resolve_frozen(names, spec, resnet.head) == subset


def test_spec_for_frozen_round_trips_whole_modules(resnet: BuiltModel) -> None:
    names = names_of(resnet.model)
    modules = sorted({".".join(n.split(".")[:depth]) for n in names
                      for depth in range(1, n.count(".") + 1)})
    rng = random.Random(99)
    for _ in range(40):
        chosen = rng.sample(modules, rng.randrange(1, 6))
        subset = under(names, *chosen)
        spec = spec_for_frozen(names, subset, resnet.head)
        assert resolve_frozen(names, spec, resnet.head) == subset
        assert len(spec.freeze) <= len(chosen)


def test_spec_for_frozen_prefers_presets(resnet: BuiltModel) -> None:
    names = names_of(resnet.model)
    head_only = set(names) - under(names, "fc")
    spec = spec_for_frozen(names, head_only, resnet.head, bn_frozen=False)
    assert spec == FreezeSpec(preset="head_only", bn_frozen=False)
    assert spec_for_frozen(names, set(), resnet.head) == FreezeSpec()
    everything = spec_for_frozen(names, names, resnet.head)
    assert everything.freeze == ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")


def test_compress_names_whole_modules(resnet: BuiltModel) -> None:
    names = names_of(resnet.model)
    selected = under(names, "layer1", "layer2.0", "fc.bias")
    assert compress(names, selected) == ("layer1", "layer2.0", "fc.bias")
    assert compress(names, under(names, "layer3.0", "layer3.1")) == ("layer3",)
    partial = under(names, "layer4.1") - {"layer4.1.bn2.bias"}
    assert compress(names, partial) == (
        "layer4.1.conv1", "layer4.1.bn1", "layer4.1.conv2", "layer4.1.bn2.weight")
    assert compress(names, []) == ()


# ---------------------------------------------------------------------------------------------
# Applying a freeze


def test_apply_freeze_sets_requires_grad_and_undoes_it() -> None:
    model = tiny_net()
    frozen = under(names_of(model), "stem")
    apply_freeze(model, frozen)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    apply_freeze(model, set())
    assert all(p.requires_grad for p in model.parameters())


def test_count_params_and_summary() -> None:
    model = nn.Sequential(nn.Linear(100, 10), nn.Linear(10, 10))  # 1,010 + 110
    counts = count_params(model, {"0.weight", "0.bias"})
    assert (counts.trainable, counts.total, counts.frozen) == (110, 1120, 1010)
    assert counts.summary() == "trainable 110 of 1,120 parameters (9.8 %)"
    assert count_params(model, set()).summary() == "trainable 1,120 of 1,120 parameters (100.0 %)"
    assert count_params(nn.ReLU(), set()).summary() == "trainable 0 of 0 parameters (0.0 %)"


def test_frozen_batchnorms_go_back_to_eval_after_train() -> None:
    model = tiny_net()
    names = names_of(model)
    frozen = under(names, "stem") | {"features.0.bn.weight"}  # features.0.bn only half frozen
    assert frozen_norm_modules(model, frozen) == ["stem.bn"]
    model.train()
    assert set_frozen_norms_eval(model, frozen) == 1
    assert model.training
    assert not model.get_submodule("stem.bn").training
    assert model.get_submodule("stem.conv").training
    assert model.get_submodule("features.0.bn").training
    assert model.get_submodule("features.1.bn").training


def test_frozen_batchnorm_keeps_its_statistics_in_train_mode() -> None:
    torch.manual_seed(0)
    model = tiny_net()
    frozen = under(names_of(model), "stem")
    apply_freeze(model, frozen)
    model.train()
    set_frozen_norms_eval(model, frozen)
    stem_bn = model.get_submodule("stem.bn")
    free_bn = model.get_submodule("features.0.bn")
    stem_before = stem_bn.running_mean.clone(), stem_bn.running_var.clone()
    free_before = free_bn.running_mean.clone()
    model(torch.randn(4, 3, 8, 8) * 3 + 1)
    assert torch.equal(stem_bn.running_mean, stem_before[0])
    assert torch.equal(stem_bn.running_var, stem_before[1])
    assert int(stem_bn.num_batches_tracked) == 0
    assert not torch.equal(free_bn.running_mean, free_before)


def test_head_only_resnet18_keeps_every_batchnorm(resnet: BuiltModel) -> None:
    model = resnet.model
    frozen = resolve_frozen(names_of(model), FreezeSpec(preset="head_only"), resnet.head)
    batchnorms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batchnorms) == 20
    assert frozen_norm_modules(model, frozen) == batchnorms
    model.train()
    try:
        assert set_frozen_norms_eval(model, frozen) == 20
        assert not any(model.get_submodule(n).training for n in batchnorms)
        assert model.fc.training
    finally:
        model.train()


# ---------------------------------------------------------------------------------------------
# Parameter groups


def test_assign_groups_first_match_wins_and_the_rest_is_default() -> None:
    names = names_of(tiny_net())
    groups = [ParamGroupSpec("early", ("stem", "features.0"), lr=1e-4),
              ParamGroupSpec("features", ("features",), lr=1e-3),
              ParamGroupSpec("typo", ("feature",), lr=1e-3),
              ParamGroupSpec("nothing", ("classifier*",), lr=1e-3)]
    assignment = assign_groups(names, groups)
    assert set(assignment.members("early")) == under(names, "stem", "features.0")
    assert set(assignment.members("features")) == under(names, "features.1")
    assert assignment.members(DEFAULT_GROUP) == ["head.weight", "head.bias"]
    assert assignment.order == ("early", "features", "typo", "nothing", DEFAULT_GROUP)
    assert assignment.empty == ("typo", "nothing")
    assert set(assignment.group_of) == set(names)


def test_assign_groups_without_leftovers_has_no_default_group() -> None:
    names = names_of(tiny_net())
    assignment = assign_groups(names, [ParamGroupSpec("all", ("*",), lr=1e-3)])
    assert assignment.order == ("all",)
    assert assignment.empty == ()
    assert assignment.members(DEFAULT_GROUP) == []


def _groups() -> list[ParamGroupSpec]:
    return [ParamGroupSpec("features", ("features",), lr=0.01, weight_decay=0.0),
            ParamGroupSpec("head", ("head",), lr=0.1)]


def test_optimizer_groups_carry_names_lr_and_decay_of_trainable_params_only() -> None:
    model = tiny_net()
    names = names_of(model)
    out = optimizer_groups(model, under(names, "stem"), _groups(), base_lr=1e-3,
                           weight_decay=0.05)
    assert [g["name"] for g in out] == ["features", "head"]  # the default group is all frozen
    features, head = out
    assert features["param_names"] == [n for n in names if n.startswith("features.")]
    assert features["params"] == [model.get_parameter(n) for n in features["param_names"]]
    assert (features["lr"], features["weight_decay"]) == (0.01, 0.0)
    assert head["param_names"] == ["head.weight", "head.bias"]
    assert (head["lr"], head["weight_decay"]) == (0.1, 0.05)  # None: the optimizer's decay

    out = optimizer_groups(model, {"head.weight", "head.bias"}, _groups(), 1e-3, 0.05)
    assert [g["name"] for g in out] == ["features", DEFAULT_GROUP]
    assert out[1]["param_names"] == [n for n in names if n.startswith("stem.")]
    assert (out[1]["lr"], out[1]["weight_decay"]) == (1e-3, 0.05)


@pytest.mark.parametrize("lr_scale, expected", [
    (None, {"features": 0.01, "head": 0.1, DEFAULT_GROUP: 1e-3}),
    ({"head": 0.5}, {"features": 0.01, "head": 0.05, DEFAULT_GROUP: 1e-3}),
    ({"*": 0.1}, {"features": 0.001, "head": 0.01, DEFAULT_GROUP: 1e-4}),
    ({"*": 0.1, "head": 1.0}, {"features": 0.001, "head": 0.1, DEFAULT_GROUP: 1e-4}),
])
def test_lr_scale_by_group_name_or_star(lr_scale: dict[str, float] | None,
                                        expected: dict[str, float]) -> None:
    out = optimizer_groups(tiny_net(), set(), _groups(), 1e-3, 0.05, lr_scale=lr_scale)
    assert {g["name"]: g["lr"] for g in out} == pytest.approx(expected)


def test_adamw_trains_only_the_trainable_groups() -> None:
    torch.manual_seed(0)
    model = tiny_net()
    frozen = under(names_of(model), "stem")
    apply_freeze(model, frozen)
    groups = optimizer_groups(model, frozen, _groups(), 1e-3, 0.05, lr_scale={"head": 0.5})
    optimizer = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("features", 0.01, 0.0), ("head", 0.05, 0.05)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(before) - frozen
    assert optimizer.state_dict()["param_groups"][1]["param_names"] == ["head.weight", "head.bias"]


# ---------------------------------------------------------------------------------------------
# Default groups and discriminative learning rates


def test_default_groups_of_resnet18(resnet: BuiltModel) -> None:
    groups = default_groups(resnet.model, resnet.head, base_lr=3e-3)
    assert [g.name for g in groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert all(g.lr == 3e-3 and g.weight_decay is None for g in groups)
    names = names_of(resnet.model)
    assert set(assign_groups(names, groups).members("stem")) == under(names, "conv1", "bn1")


def _check_partition(built: BuiltModel, groups: tuple[ParamGroupSpec, ...]) -> None:
    names = names_of(built.model)
    assignment = assign_groups(names, groups)
    assert assignment.members(DEFAULT_GROUP) == []
    assert assignment.empty == ()
    assert assignment.order == tuple(g.name for g in groups)
    assert len({g.name for g in groups}) == len(groups)
    assert groups[-1].name == "head"
    assert set(assignment.members("head")) == under(names, built.head)
    head_params = under(names, built.head)
    for group in groups[:-1]:  # no earlier group reaches into the head
        assert not any(matches(n, p) for n in head_params for p in group.patterns), group


@pytest.mark.parametrize("max_groups", [3, 4, 6, 8])
def test_default_groups_partition_every_model(family: BuiltModel, max_groups: int) -> None:
    groups = default_groups(family.model, family.head, base_lr=1e-3, max_groups=max_groups)
    assert 3 <= len(groups) <= max_groups
    _check_partition(family, groups)


def test_default_groups_respect_a_max_of_two(resnet: BuiltModel) -> None:
    groups = default_groups(resnet.model, resnet.head, base_lr=1e-3, max_groups=2)
    assert len(groups) <= 2


def test_convnext_head_is_its_own_group() -> None:
    built = built_on_meta("convnext_tiny")
    assert built.head == "classifier.2"
    groups = default_groups(built.model, built.head, base_lr=1e-3)
    _check_partition(built, groups)
    assert groups[-1].patterns == ("classifier.2",)


def test_discriminative_divides_by_the_factor_from_the_head_down() -> None:
    groups = [ParamGroupSpec("stem", ("stem",), lr=1.0),
              ParamGroupSpec("features", ("features",), lr=1.0, weight_decay=0.0),
              ParamGroupSpec("head", ("head",), lr=1.0)]
    out = discriminative(groups, base_lr=1e-2, factor=2.0)
    assert [g.lr for g in out] == pytest.approx([2.5e-3, 5e-3, 1e-2])
    assert [(g.name, g.patterns, g.weight_decay) for g in out] == [
        (g.name, g.patterns, g.weight_decay) for g in groups]
    assert [g.lr for g in discriminative(groups, 1e-2, factor=1.0)] == [1e-2] * 3


def test_discriminative_on_resnet18_default_groups(resnet: BuiltModel) -> None:
    groups = discriminative(default_groups(resnet.model, resnet.head, 1e-3), 1e-3)  # factor 2.6
    lrs = [g.lr for g in groups]
    assert lrs[-1] == 1e-3
    assert [lrs[i + 1] / lrs[i] for i in range(len(lrs) - 1)] == pytest.approx([2.6] * 5)


def test_discriminative_factor_below_one_is_an_error() -> None:
    with pytest.raises(ConfigError, match="factor must be 1 or more; got 0.5"):
        discriminative([ParamGroupSpec("head", ("head",), lr=1e-3)], 1e-3, factor=0.5)


# ---------------------------------------------------------------------------------------------
# Stages


def test_stage_at_picks_the_latest_stage_started() -> None:
    first, second = StageSpec(epoch=3), StageSpec(epoch=5, lr_scale={"*": 0.1})
    stages = (first, second)
    assert [stage_at(stages, epoch) for epoch in range(1, 8)] == [
        None, None, first, first, second, second, second]
    assert stage_at((), 4) is None


def test_gradual_unfreezing_opens_one_group_from_the_top_per_stage(resnet: BuiltModel) -> None:
    groups = default_groups(resnet.model, resnet.head, 1e-3)
    stages = gradual_unfreezing(groups, first_epoch=3, every=2, bn_frozen=False)
    assert [s.epoch for s in stages] == [3, 5, 7, 9, 11]
    assert [s.freeze.unfreeze for s in stages] == [
        ("layer4",), ("layer3", "layer4"), ("layer2", "layer3", "layer4"),
        ("layer1", "layer2", "layer3", "layer4"),
        ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")]
    assert all(s.freeze.preset == "head_only" and not s.freeze.bn_frozen for s in stages)

    names = names_of(resnet.model)
    frozen = resolve_frozen(names, FreezeSpec(preset="head_only"), resnet.head)
    for stage, opened in zip(stages, ["layer4", "layer3", "layer2", "layer1", "stem"],
                             strict=True):
        now = resolve_frozen(names, stage.freeze, resnet.head)
        group = next(g for g in groups if g.name == opened)
        assert frozen - now == under(names, *group.patterns)
        frozen = now
    assert frozen == set()


def test_gradual_unfreezing_ends_training_everything(family: BuiltModel) -> None:
    names = names_of(family.model)
    groups = default_groups(family.model, family.head, 1e-3)
    run_freeze = FreezeSpec(preset="head_only")
    stages = gradual_unfreezing(groups)
    assert [s.epoch for s in stages] == list(range(2, 2 + len(groups) - 1))
    counts = []
    for epoch in range(1, stages[-1].epoch + 2):
        stage = stage_at(stages, epoch)
        spec = run_freeze if stage is None else stage.freeze
        counts.append(len(resolve_frozen(names, spec, family.head)))
    assert counts[0] == len(names) - len(under(names, family.head))
    opening, after = counts[:-1], counts[-1]  # one count per stage, then an epoch past the last
    assert all(later < earlier for earlier, later in zip(opening, opening[1:], strict=False))
    assert opening[-1] == after == 0


def test_gradual_unfreezing_needs_at_least_one_epoch_between_stages() -> None:
    with pytest.raises(ConfigError, match="at least 1 epoch apart; got 0"):
        gradual_unfreezing(_groups(), every=0)


def test_default_groups_below_two_is_refused(resnet: BuiltModel) -> None:
    with pytest.raises(ConfigError, match="at least 2 groups"):
        default_groups(resnet.model, resnet.head, base_lr=1e-3, max_groups=1)
