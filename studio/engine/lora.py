"""LoRA adapters from the layer tree, through peft: choose, attach, count and merge.

A :class:`~studio.engine.config.LoraSpec` names modules with the freeze spec's globs; every
``nn.Linear``, ``nn.Conv2d`` and ``nn.MultiheadAttention`` under them (never in the head) gets a
peft LoRA layer (``inject_adapter_in_model`` on the plain model, no ``PeftModel`` wrapper), so the
model's state dict holds the adapters beside the untouched base weights and checkpoints resume
exactly. :func:`merge_adapters` folds the adapters into the weights with peft's own merge, which
turns a LoRA run back into the plain backbone that evaluation and every export format take.

peft (and the transformers it imports, ~5 s) is imported only when a spec has targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from studio.engine.config import LoraSpec
from studio.engine.errors import ConfigError
from studio.engine.params import base_name, is_adapter, is_under, matches

ADAPTER = "default"  # peft's adapter name; one adapter per model

# The layer tree's presets: which modules they adapt
PRESETS = {"attention": "LoRA on attention", "linear": "LoRA on all linear layers"}
_ATTENTION_WORDS = ("attn", "attention")


@dataclass(frozen=True, slots=True)
class LoraReport:
    """What the adapters added: the layers they adapt and the parameters that train."""

    layers: tuple[str, ...]  # module names of the adapted layers
    adapter_params: int
    total_params: int  # the model's parameters with the adapters

    def summary(self, trainable: int) -> str:
        return lora_line(trainable, self.total_params, self.adapter_params, len(self.layers))


def lora_line(trainable: int, total: int, adapters: int, layers: int) -> str:
    """ "LoRA: 0.6 M of 86.6 M parameters train (…)": what a run's summary says; ``trainable``
    counts the adapters and whatever else trains (the head)."""
    return (f"LoRA: {_millions(trainable)} of {_millions(total)} parameters train "
            f"({layers} adapted layers holding {_millions(adapters)})")


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f} M" if count >= 50_000 else f"{count:,}"


def adaptable_layers(model: nn.Module, head: str, image_size: int = 224) -> list[str]:
    """Module names of the layers LoRA can adapt, in order: Linear, ungrouped Conv2d and
    MultiheadAttention layers outside the head, not inside an attention module (peft's
    MultiheadAttention adapter covers its output projection), and called by the model's
    forward: a layer whose weight the model reads directly (torchvision's Swin attention)
    would never run its adapter, so it is left out."""
    out: list[str] = []
    attention: list[str] = []
    for name, module in model.named_modules():
        if not name or is_under(name, head) or any(is_under(name, a) for a in attention):
            continue
        if isinstance(module, nn.MultiheadAttention):
            attention.append(name)
            out.append(name)
        elif isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d)
                                                and module.groups == 1):
            out.append(name)  # (peft cannot merge an adapter into a grouped convolution)
    called = _called(model, out, image_size)
    return [name for name in out if called is None or name in called]


def _called(model: nn.Module, layers: Sequence[str], image_size: int) -> set[str] | None:
    """Which of ``layers`` a forward pass calls, found on the meta device (no compute, no
    memory); None when the model cannot run there."""
    import torch
    from torch.func import functional_call

    seen: set[str] = set()
    modules = dict(model.named_modules())
    hooks = [modules[name].register_forward_hook(lambda *_, name=name: seen.add(name))
             for name in layers]
    tensors = {name: torch.empty_like(t, device="meta") for name, t in
               [*model.named_parameters(), *model.named_buffers()]}
    modes = {name: m.training for name, m in modules.items()}
    try:
        model.eval()
        functional_call(model, tensors, (torch.empty(1, 3, image_size, image_size,
                                                     device="meta"),))
    except Exception:  # noqa: BLE001 - an op without a meta kernel: don't filter
        return None
    finally:
        for hook in hooks:
            hook.remove()
        for name, m in modules.items():
            m.training = modes[name]
    return seen


def resolve_layers(model: nn.Module, targets: Sequence[str], head: str,
                   image_size: int = 224) -> list[str]:
    """The layers ``targets`` adapt; a target that reaches none is a ConfigError."""
    layers = adaptable_layers(model, head, image_size)
    for pattern in targets:
        if not choose(layers, [pattern]):
            raise ConfigError(
                f"LoRA target {pattern!r} holds no Linear, Conv2d or attention layer outside "
                f"the head that the model calls; pick modules from the layer tree, e.g. "
                f"{layers[len(layers) // 2] if layers else 'encoder'}")
    return choose(layers, targets)


def preset_targets(model: nn.Module, head: str, preset: str, image_size: int = 224,
                   layers: Sequence[str] | None = None) -> tuple[str, ...]:
    """The layers a preset adapts: ``attention`` (attention modules and the projections inside
    a module named attn/attention) or ``linear`` (every Linear and attention layer), among
    ``layers`` (the model's adaptable layers, found when not given)."""
    if preset not in PRESETS:
        raise ConfigError(f"LoRA preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    modules = dict(model.named_modules())
    out = []
    if layers is None:
        layers = adaptable_layers(model, head, image_size)
    for layer in layers:
        module = modules[layer]
        if preset == "linear":
            if isinstance(module, nn.Linear | nn.MultiheadAttention):
                out.append(layer)
        elif isinstance(module, nn.MultiheadAttention) or _in_attention(layer, modules):
            out.append(layer)
    return tuple(out)


def _in_attention(layer: str, modules: dict[str, nn.Module]) -> bool:
    """The nearest named (not numbered) module above ``layer`` is an attention block."""
    parts = layer.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        word = parts[depth - 1]
        if word.isdigit():
            continue
        kind = type(modules.get(".".join(parts[:depth]))).__name__.lower()
        return any(w in word.lower() or w in kind for w in _ATTENTION_WORDS)
    return False


def attach(model: nn.Module, spec: LoraSpec, head: str, image_size: int = 224) -> LoraReport:
    """Put adapters on the layers ``spec`` targets, in place; the base weights are untouched."""
    layers = resolve_layers(model, spec.targets, head, image_size)
    if not layers:
        raise ConfigError("LoRA has no targets; name modules in lora.targets (--lora GLOB)")
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(layers), bias="none")
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():  # peft froze everything else; the freeze
        if not is_adapter(name):                    # spec decides that, not peft
            param.requires_grad_(trainable.get(base_name(name), True))
    if hasattr(model, "peft_config"):
        del model.peft_config  # a dict of peft objects on the model: not state, not picklable
    adapters = sum(p.numel() for n, p in model.named_parameters() if is_adapter(n))
    total = sum(p.numel() for p in model.parameters())
    return LoraReport(tuple(layers), adapters, total)


def merge_adapters(model: nn.Module) -> int:
    """Fold every adapter into the weight it adapts (peft's merge, checked for NaN) and put the
    plain layer back: the model is then the backbone alone. Returns how many layers merged."""
    tuners = _tuner_layers(model)
    for name in tuners:
        layer = model.get_submodule(name)
        if hasattr(layer, "unload_and_optionally_merge_module"):  # attention's own way
            plain = layer.unload_and_optionally_merge_module(merge=True, safe_merge=True,
                                                             adapter_names=None)
        else:
            layer.merge(safe_merge=True)
            plain = layer.get_base_layer()
        model.set_submodule(name, plain)
    return len(tuners)


def _tuner_layers(model: nn.Module) -> list[str]:
    """Names of peft's adapter layers, outermost only (an attention adapter holds another)."""
    found = [n for n, m in model.named_modules() if isinstance(m, tracer_leaves())]
    return [n for n in found if not any(n != o and is_under(n, o) for o in found)]


def tracer_leaves() -> tuple[type[Any], ...]:
    """peft's layer classes (none without peft): what an adapted layer is an instance of, and
    what a tracer should treat as one step."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return ()
    return (BaseTunerLayer,)


def adapter_size(module: nn.Module, rank: int) -> int:
    """Parameters peft's adapter on ``module`` holds at ``rank``: A (in → r) and B (r → out);
    an attention layer has one pair on its fused input projection (E → r → 3E) and one on its
    output projection (E → r → E). Counted without building anything (the layer tree)."""
    if isinstance(module, nn.MultiheadAttention):
        return rank * 6 * module.embed_dim
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        return rank * (module.in_channels * kernel + module.out_channels)
    if isinstance(module, nn.Linear):
        return rank * (module.in_features + module.out_features)
    return 0


def choose(layers: Sequence[str], targets: Sequence[str]) -> list[str]:
    """The layers among ``layers`` that ``targets`` reach (no error for a target that reaches
    none: the layer tree shows what a spec does while it is edited)."""
    return [layer for layer in layers
            if any(matches(layer, t) or is_under(layer, t) for t in targets)]
