"""Layer-wise learning-rate decay (LLRD), as timm's ``param_groups_layer_decay``.

Every parameter gets a layer id, 0 for the stem up to ``top`` for the head (and the norm just
before it); a layer's rate is ``base_lr × rate ** (top − id)``. The result is ordinary
``ParamGroupSpec``s, one per layer, so the groups stay visible and editable like any others and
a run's config records them explicitly.

ViT, Swin, ConvNeXt and MaxViT get their blocks from torchvision's module names; every other
model falls back to ``stage_units`` (top-level modules, the big ones opened), whose small leading
modules make up the stem.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from studio.engine import timm_zoo
from studio.engine.backbones import ModelDescription, backbone_info
from studio.engine.config import ParamGroupSpec
from studio.engine.errors import ConfigError
from studio.engine.params import STEM_SHARE, compress, is_under, stage_units

DEFAULT_RATE = 0.75
_STEM = (0,)
_TOP = (1 << 30,)  # sorts after every block key


def _vit_key(name: str) -> tuple[int, ...]:
    if re.match(r"(conv_proj|class_token|encoder\.pos_embedding)(\.|$)", name):
        return _STEM
    block = re.match(r"encoder\.layers\.encoder_layer_(\d+)\.", name)
    return (1, int(block.group(1))) if block else _TOP


def _staged_key(name: str) -> tuple[int, ...]:
    """torchvision Swin and ConvNeXt: ``features.0`` the stem, odd ``features.k`` stages of
    blocks, even ones downsampling — which join the first block of the next stage, as in timm."""
    found = re.match(r"features\.(\d+)\.(?:(\d+)\.)?", name)
    if not found:
        return _TOP
    stage = int(found.group(1))
    if stage == 0:
        return _STEM
    if stage % 2 == 0:
        return (1, stage + 1, 0)
    return (1, stage, int(found.group(2) or 0))


def _maxvit_key(name: str) -> tuple[int, ...]:
    if is_under(name, "stem"):
        return _STEM
    block = re.match(r"blocks\.(\d+)\.layers\.(\d+)\.", name)
    if block:
        return (1, int(block.group(1)), int(block.group(2)))
    block = re.match(r"blocks\.(\d+)\.", name)
    return (1, int(block.group(1)), 0) if block else _TOP


_FAMILY_KEYS = {"vision_transformer": _vit_key, "swin_transformer": _staged_key,
                "convnext": _staged_key, "maxvit": _maxvit_key}


def layer_ids(names: Sequence[str], numel: dict[str, int], head: str,
              family: str = "", given: dict[str, int] | None = None) -> dict[str, int]:
    """The layer id of every parameter: 0 the stem, increasing towards the head, which (with
    anything after the last block) has the largest id. ``given`` ids (timm's own grouping of a
    timm model) are only renumbered."""
    key_of = _FAMILY_KEYS.get(family)
    if given is not None:
        keys: dict[str, tuple[int, ...]] = {n: (given[n],) for n in names}
    elif key_of is not None:
        keys = {n: _TOP if is_under(n, head) else key_of(n) for n in names}
    else:
        keys = _generic_keys(names, numel, head)
    order = {key: i for i, key in enumerate(sorted(set(keys.values())))}
    return {n: order[keys[n]] for n in names}


def _generic_keys(names: Sequence[str], numel: dict[str, int],
                  head: str) -> dict[str, tuple[int, ...]]:
    units = stage_units(names, numel, head)
    backbone_total = sum(v for n, v in numel.items() if not is_under(n, head)) or 1
    unit_size = {u: sum(v for n, v in numel.items() if is_under(n, u)) for u in units}
    stem = 0
    while stem < len(units) - 1 and unit_size[units[stem]] < STEM_SHARE * backbone_total:
        stem += 1
    keys: dict[str, tuple[int, ...]] = {}
    for name in names:
        index = next((i for i, u in enumerate(units) if is_under(name, u)), None)
        if is_under(name, head) or index is None:
            keys[name] = _TOP
        else:
            keys[name] = _STEM if index < stem else (1, index)
    return keys


def layer_decay_groups(names: Sequence[str], numel: dict[str, int], head: str, base_lr: float,
                       rate: float = DEFAULT_RATE,
                       family: str = "",
                       given: dict[str, int] | None = None) -> tuple[ParamGroupSpec, ...]:
    """One group per layer, stem first: ``layer_<id>`` at ``base_lr × rate ** (top − id)``,
    the top one named ``head`` at ``base_lr``. Patterns are the fewest module prefixes of the
    layer's parameters, so no two groups overlap."""
    if not 0 < rate <= 1:
        raise ConfigError(f"the layer decay rate must be above 0 and at most 1; got {rate}")
    ids = layer_ids(names, numel, head, family, given)
    top = max(ids.values(), default=0)
    groups = []
    for layer in range(top + 1):
        members = [n for n in names if ids[n] == layer]
        if not members:
            continue
        name = "head" if layer == top else f"layer_{layer}"
        groups.append(ParamGroupSpec(name, compress(names, members),
                                     base_lr * rate ** (top - layer)))
    return tuple(groups)


def description_layer_decay(description: ModelDescription, base_lr: float,
                            rate: float = DEFAULT_RATE) -> tuple[ParamGroupSpec, ...]:
    """``layer_decay_groups`` of a described (meta-device) model: what the CLI and GUI call."""
    given = None
    if timm_zoo.is_timm(description.backbone):  # timm's group_matcher knows its blocks
        family = ""
        given = timm_zoo.layer_ids(description.model, description.names, description.head)
    else:
        family = backbone_info(description.backbone).family
    return layer_decay_groups(description.names, description.numel, description.head, base_lr,
                              rate, family, given)
