"""Parameters of a model: the module tree, freeze specs, parameter groups and unfreezing stages.

Everything here works on parameter *names* (``named_parameters()``), so a freeze spec or a group
survives a rebuilt model, a checkpoint, or a stage that unfroze more layers.

Pattern rule (freeze, unfreeze, group patterns): a glob matches a parameter name
(``layer1.0.conv1.weight``) or any module prefix of it (``layer1`` matches all of ``layer1``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from studio.engine.config import FreezeSpec, ParamGroupSpec, StageSpec
from studio.engine.errors import ConfigError

DEFAULT_GROUP = "default"
STEM_SHARE = 0.01  # leading modules each holding less than this share of the backbone → "stem"


def matches(name: str, pattern: str) -> bool:
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def is_under(name: str, module: str) -> bool:
    """True when parameter ``name`` belongs to ``module`` (or is it)."""
    return not module or name == module or name.startswith(module + ".")


# LoRA (studio.engine.lora) wraps an adapted layer: its weight ``fc.weight`` becomes
# ``fc.base_layer.weight`` beside the adapters ``fc.lora_A.default.weight``. Patterns are
# matched against the base name, the one the layer tree shows, so a spec means the same with
# or without adapters; the adapters always train and the adapted weights never do.
_BASE_LAYER = ".base_layer"
_ADAPTER_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.",
                  ".lora_magnitude_vector.")


def base_name(name: str) -> str:
    """``fc.base_layer.weight`` → ``fc.weight``: the name without LoRA's wrapping."""
    return name.replace(_BASE_LAYER + ".", ".") if _BASE_LAYER in name else name


def is_adapter(name: str) -> bool:
    """A LoRA adapter's parameter (it always trains)."""
    return any(part in name for part in _ADAPTER_PARTS)


def is_adapted(name: str) -> bool:
    """A weight of a layer LoRA adapts (it stays frozen and bit-identical)."""
    return (_BASE_LAYER + ".") in name and not is_adapter(name)


# ---------------------------------------------------------------------------------------------
# The tree


@dataclass
class ParamNode:
    """A module (with children) or a parameter (a leaf with a shape)."""

    name: str  # full dotted name; "" for the root
    label: str  # last component of the name
    children: list[ParamNode] = field(default_factory=list)
    shape: tuple[int, ...] | None = None
    numel: int = 0

    @property
    def is_leaf(self) -> bool:
        return self.shape is not None

    def leaves(self) -> Iterable[ParamNode]:
        if self.is_leaf:
            yield self
        for child in self.children:
            yield from child.leaves()

    def find(self, name: str) -> ParamNode | None:
        if self.name == name:
            return self
        for child in self.children:
            if is_under(name, child.name):
                return child.find(name)
        return None


def param_tree(model: nn.Module) -> ParamNode:
    """The module hierarchy of ``named_parameters()``, in registration order, with counts."""
    root = ParamNode("", "")
    index: dict[str, ParamNode] = {"": root}
    for name, param in model.named_parameters():
        parts = name.split(".")
        parent = root
        for depth in range(1, len(parts) + 1):
            path = ".".join(parts[:depth])
            node = index.get(path)
            if node is None:
                leaf = depth == len(parts)
                node = ParamNode(path, parts[depth - 1],
                                 shape=tuple(param.shape) if leaf else None)
                index[path] = node
                parent.children.append(node)
            node.numel += param.numel()
            parent = node
        root.numel += param.numel()
    return root


def compress(names: Sequence[str], selected: Iterable[str]) -> tuple[str, ...]:
    """The fewest module prefixes / names that cover exactly ``selected`` among ``names``."""
    chosen = set(selected)
    out: list[str] = []

    def walk(node: ParamNode) -> None:
        leaves = [leaf.name for leaf in node.leaves()]
        if node.name and all(leaf in chosen for leaf in leaves):
            out.append(re.sub(r"([*?\[])", r"[\1]", node.name))  # a name, not a glob
        elif any(leaf in chosen for leaf in leaves):
            for child in node.children:
                walk(child)

    walk(_tree_of_names(names))
    return tuple(out)


def _tree_of_names(names: Sequence[str]) -> ParamNode:
    root = ParamNode("", "")
    index = {"": root}
    for name in names:
        parts = name.split(".")
        parent = root
        for depth in range(1, len(parts) + 1):
            path = ".".join(parts[:depth])
            if path not in index:
                index[path] = ParamNode(path, parts[depth - 1],
                                        shape=() if depth == len(parts) else None)
                parent.children.append(index[path])
            parent = index[path]
    return root


# ---------------------------------------------------------------------------------------------
# Freezing


def resolve_frozen(names: Sequence[str], spec: FreezeSpec, head: str) -> frozenset[str]:
    """The names frozen by ``spec``: its preset, then ``freeze`` globs, then ``unfreeze`` globs.

    A glob or module that matches nothing is a ConfigError (it is almost always a typo).
    """
    if spec.preset == "train_all":
        frozen = set()
    elif spec.preset == "head_only":
        frozen = {n for n in names if not is_under(n, head)}
    else:  # up_to
        hits = [i for i, n in enumerate(names) if is_under(n, spec.up_to)]
        if not hits:
            raise ConfigError(f"freeze up_to {spec.up_to!r} names no module of this model; "
                              f"pick a module from the layer tree, e.g. {_example(names)}")
        frozen = set(names[: hits[-1] + 1])
    for pattern in spec.freeze:
        frozen |= _matching(names, pattern, "freeze")
    for pattern in spec.unfreeze:
        frozen -= _matching(names, pattern, "unfreeze")
    for name in names:  # LoRA: the adapters train, what they adapt does not
        if is_adapter(name):
            frozen.discard(name)
        elif is_adapted(name):
            frozen.add(name)
    return frozenset(frozen)


_GLOB_CHARS = re.compile(r"[*?\[]")


def _matching(names: Sequence[str], pattern: str, what: str) -> set[str]:
    if _GLOB_CHARS.search(pattern):
        found = {n for n in names if matches(base_name(n), pattern)}
    else:  # a plain name or module prefix: no glob machinery needed
        found = {n for n in names if is_under(base_name(n), pattern)}
    if not found:
        raise ConfigError(f"{what} pattern {pattern!r} matches no parameter of this model; "
                          f"parameter names look like {_example(names)}")
    return found


def _example(names: Sequence[str]) -> str:
    return names[len(names) // 2] if names else "layer1.0.conv1.weight"


def spec_for_frozen(names: Sequence[str], frozen: Iterable[str], head: str,
                    bn_frozen: bool = True) -> FreezeSpec:
    """A compact FreezeSpec that freezes exactly ``frozen`` (what the layer tree edits)."""
    frozen = set(frozen)
    if not frozen:
        return FreezeSpec(bn_frozen=bn_frozen)
    head_only = {n for n in names if not is_under(n, head)}
    if frozen == head_only:
        return FreezeSpec(preset="head_only", bn_frozen=bn_frozen)
    return FreezeSpec(freeze=compress(names, frozen), bn_frozen=bn_frozen)


def apply_freeze(model: nn.Module, frozen: Iterable[str]) -> None:
    frozen = set(frozen)
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)


def frozen_norm_modules(model: nn.Module, frozen: Iterable[str]) -> list[str]:
    """BatchNorm modules all of whose parameters are frozen: they keep their statistics."""
    frozen = set(frozen)
    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
            if own and all(p in frozen for p in own):
                out.append(name)
    return out


def set_frozen_norms_eval(model: nn.Module, frozen: Iterable[str]) -> int:
    """Call after ``model.train()``: put frozen BatchNorm layers back in eval mode."""
    names = frozen_norm_modules(model, frozen)
    for name in names:
        model.get_submodule(name).eval()
    return len(names)


@dataclass(frozen=True, slots=True)
class ParamCounts:
    trainable: int
    total: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def trainable_share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def summary(self) -> str:
        return (f"trainable {self.trainable:,} of {self.total:,} parameters "
                f"({100 * self.trainable_share:.1f} %)")


def count_params(model: nn.Module, frozen: Iterable[str]) -> ParamCounts:
    frozen = set(frozen)
    total = trainable = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if name not in frozen:
            trainable += param.numel()
    return ParamCounts(trainable, total)


# ---------------------------------------------------------------------------------------------
# Parameter groups


@dataclass(frozen=True)
class GroupAssignment:
    """Which group each parameter is in: the first group with a matching pattern, else default."""

    group_of: dict[str, str]
    order: tuple[str, ...]  # group names: specs in order, then "default" if it has members
    empty: tuple[str, ...]  # groups whose patterns matched no parameter

    def members(self, group: str) -> list[str]:
        return [n for n, g in self.group_of.items() if g == group]


def assign_groups(names: Sequence[str], groups: Sequence[ParamGroupSpec]) -> GroupAssignment:
    group_of: dict[str, str] = {}
    for name in names:
        plain = base_name(name)
        group_of[name] = next((g.name for g in groups
                               if any(matches(plain, p) for p in g.patterns)), DEFAULT_GROUP)
    used = set(group_of.values())
    order = [g.name for g in groups]
    if DEFAULT_GROUP in used and DEFAULT_GROUP not in order:
        order.append(DEFAULT_GROUP)
    empty = tuple(g.name for g in groups if g.name not in used)
    return GroupAssignment(group_of, tuple(order), empty)


def group_settings(groups: Sequence[ParamGroupSpec], base_lr: float,
                   weight_decay: float) -> dict[str, tuple[float, float]]:
    """(lr, weight decay) of every group, the default group included."""
    out = {g.name: (g.lr, weight_decay if g.weight_decay is None else g.weight_decay)
           for g in groups}
    out.setdefault(DEFAULT_GROUP, (base_lr, weight_decay))
    return out


def optimizer_groups(model: nn.Module, frozen: Iterable[str], groups: Sequence[ParamGroupSpec],
                     base_lr: float, weight_decay: float,
                     lr_scale: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """``torch.optim`` parameter groups of the trainable parameters only, each carrying its
    ``name`` and ``param_names`` so optimizer state can be keyed by parameter name."""
    frozen = set(frozen)
    params = dict(model.named_parameters())
    assignment = assign_groups(list(params), groups)
    settings = group_settings(groups, base_lr, weight_decay)
    out = []
    for group in assignment.order:
        names = [n for n in assignment.members(group) if n not in frozen]
        if not names:
            continue
        lr, decay = settings[group]
        out.append({"params": [params[n] for n in names], "param_names": names, "name": group,
                    "lr": lr * _scale(lr_scale, group), "weight_decay": decay})
    return out


def _scale(lr_scale: dict[str, float] | None, group: str) -> float:
    if not lr_scale:
        return 1.0
    return lr_scale.get(group, lr_scale.get("*", 1.0))


def stage_units(names: Sequence[str], numel: dict[str, int], head: str) -> list[str]:
    """The backbone's blocks: module prefixes in order, expanded until no single one dominates.

    ResNet gives conv1, bn1, layer1 … layer4; a ViT's encoder is opened into its layers. A module
    holding the head (ConvNeXt's ``classifier``) is opened so that no unit contains the head.
    """
    backbone = [n for n in names if not is_under(n, head)]
    leaves = set(backbone)
    total = sum(numel[n] for n in backbone) or 1
    sizes: dict[str, int] = {}
    kids: dict[str, list[str]] = {}
    for n in backbone:  # one pass: the size and children of every module prefix
        parts = n.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            sizes[prefix] = sizes.get(prefix, 0) + numel[n]
            if depth > 1:
                parent = ".".join(parts[: depth - 1])
                siblings = kids.setdefault(parent, [])
                if not siblings or siblings[-1] != prefix:
                    if prefix not in siblings:
                        siblings.append(prefix)

    def size(unit: str) -> int:
        return sizes.get(unit, 0)

    def children(unit: str) -> list[str]:
        return kids.get(unit, [])

    def openable(unit: str) -> bool:  # a container of modules, not a single layer's tensors
        own = children(unit)
        return len(own) >= 2 and not all(k in leaves for k in own)

    units: list[str] = []
    for n in backbone:
        top = n.split(".")[0]
        if top not in units:
            units.append(top)
    while any(u != head and is_under(head, u) for u in units):
        i = next(i for i, u in enumerate(units) if is_under(head, u))
        units[i:i + 1] = children(units[i])
    for _ in range(12):
        expandable = [u for u in units if openable(u)]
        if not expandable:
            break
        biggest = max(expandable, key=size)
        if len(units) >= 4 and size(biggest) <= 0.8 * total:
            break
        i = units.index(biggest)
        units[i:i + 1] = children(biggest)
    return units


def default_groups(model: nn.Module, head: str, base_lr: float,
                   max_groups: int = 6) -> tuple[ParamGroupSpec, ...]:
    """Groups by stage, input to output: "stem" (the small leading modules), the blocks (merged
    so that there are at most ``max_groups`` groups in all), then "head" — all at ``base_lr``;
    the discriminative preset rescales them."""
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    numel = {n: p.numel() for n, p in named}
    units = stage_units(names, numel, head)
    backbone_total = sum(v for n, v in numel.items() if not is_under(n, head)) or 1

    unit_size: dict[str, int] = {}
    for name, count in numel.items():
        for unit in units:
            if is_under(name, unit):
                unit_size[unit] = unit_size.get(unit, 0) + count
                break

    def size(patterns: list[str]) -> int:
        return sum(unit_size.get(p, 0) for p in patterns)

    stem: list[str] = []
    while len(units) > 1 and size([units[0]]) < STEM_SHARE * backbone_total:
        stem.append(units.pop(0))
    blocks = [[unit] for unit in units]
    if max_groups < 2:
        raise ConfigError(f"at least 2 groups are needed (body and head); got {max_groups}")
    if stem and max_groups == 2:
        units, stem = stem + units, []
    room = max(1, max_groups - 1 - (1 if stem else 0))
    while len(blocks) > room:
        pair = min(range(len(blocks) - 1), key=lambda i: size(blocks[i] + blocks[i + 1]))
        blocks[pair:pair + 2] = [blocks[pair] + blocks[pair + 1]]
    specs = [ParamGroupSpec(name="stem", patterns=tuple(stem), lr=base_lr)] if stem else []
    specs += [ParamGroupSpec(name=_block_name(b), patterns=tuple(b), lr=base_lr) for b in blocks]
    specs.append(ParamGroupSpec(name="head", patterns=(head,), lr=base_lr))
    return _unique_names(specs)


def _block_name(block: list[str]) -> str:
    """``layer1``; ``features.0-4``; ``encoder.layers.encoder_layer_3-4``."""
    if len(block) == 1:
        return block[0]
    first, last = block[0].split("."), block[-1].split(".")
    common = 0
    while common < min(len(first), len(last)) - 1 and first[common] == last[common]:
        common += 1
    start, end = ".".join(first[common:]), ".".join(last[common:])
    stem = re.match(r"(.*?)(\d+)$", start)
    if stem and re.fullmatch(re.escape(stem.group(1)) + r"\d+", end):
        end = end[len(stem.group(1)):]
    prefix = ".".join(first[:common])
    return f"{prefix}.{start}-{end}" if prefix else f"{start}-{end}"


def _unique_names(specs: list[ParamGroupSpec]) -> tuple[ParamGroupSpec, ...]:
    seen: dict[str, int] = {}
    out = []
    for spec in specs:
        count = seen.get(spec.name, 0)
        seen[spec.name] = count + 1
        name = spec.name if count == 0 else f"{spec.name}_{count + 1}"
        out.append(ParamGroupSpec(name, spec.patterns, spec.lr, spec.weight_decay))
    return tuple(out)


def discriminative(groups: Sequence[ParamGroupSpec], base_lr: float,
                   factor: float = 2.6) -> tuple[ParamGroupSpec, ...]:
    """The last group (the head) at ``base_lr``, each earlier one divided by ``factor`` more
    (fastai's default factor 2.6)."""
    if factor < 1:
        raise ConfigError(f"the discriminative factor must be 1 or more; got {factor}")
    n = len(groups)
    return tuple(ParamGroupSpec(g.name, g.patterns, base_lr / factor ** (n - 1 - i),
                                g.weight_decay) for i, g in enumerate(groups))


# ---------------------------------------------------------------------------------------------
# Stages


def stage_at(stages: Sequence[StageSpec], epoch: int) -> StageSpec | None:
    """The stage in force at 1-based ``epoch`` (None: the run's own freeze spec)."""
    current = None
    for stage in stages:
        if stage.epoch <= epoch:
            current = stage
    return current


def gradual_unfreezing(groups: Sequence[ParamGroupSpec], first_epoch: int = 2, every: int = 1,
                       bn_frozen: bool = True) -> tuple[StageSpec, ...]:
    """Start with the head only (the run's freeze spec should say so), then from
    ``first_epoch`` unfreeze one more group from the top every ``every`` epochs."""
    if every < 1:
        raise ConfigError(f"stages must be at least 1 epoch apart; got {every}")
    backbone = list(groups[:-1])  # the last group is the head
    stages = []
    for k in range(1, len(backbone) + 1):
        opened = [p for g in backbone[len(backbone) - k:] for p in g.patterns]
        spec = FreezeSpec(preset="head_only", unfreeze=tuple(opened), bn_frozen=bn_frozen)
        stages.append(StageSpec(epoch=first_epoch + (k - 1) * every, freeze=spec))
    return tuple(stages)
