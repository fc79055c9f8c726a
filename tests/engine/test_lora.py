"""LoRA from the layer tree: which layers adapt, what trains, what stays, resume and export.

One tiny run (mobilenet_v3_small at 32 px with adapters on the convolutions of its last
inverted-residual block, the head training, the rest frozen) starts from a weights file the
test saves itself, so "the base stays bit-identical" can be checked against the exact tensors
it started from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision import models

from studio.engine.backbones import describe_model
from studio.engine.checkpoint import load_checkpoint
from studio.engine.config import (
    ConfigError,
    DataConfig,
    FreezeSpec,
    LoraSpec,
    ModelConfig,
    OptimConfig,
    ParamGroupSpec,
    RunConfig,
    TrainConfig,
)
from studio.engine.events import Outcome
from studio.engine.export import export_run
from studio.engine.features import split_model
from studio.engine.lora import attach, merge_adapters, preset_targets, resolve_layers
from studio.engine.params import base_name, is_adapter, resolve_frozen
from studio.engine.parts import build_parts
from studio.engine.runs import open_run
from studio.engine.trainer import Trainer

SIZE = 32
BACKBONE = "mobilenet_v3_small"
TARGET = "features.11"  # the last block: four ungrouped convolutions (not the depthwise one)
HEAD = "classifier.3"


@pytest.fixture(scope="module")
def base_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of the test's own, as a user's local pretrained file."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("lora-weights") / f"{BACKBONE}.safetensors"
    model = models.get_model(BACKBONE)
    for module in model.modules():  # BatchNorm statistics of real activations, so that the
        if isinstance(module, nn.BatchNorm2d):  # network's output depends on its input
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.rand(16, 3, SIZE, SIZE))
    state = model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def lora_config(data: Path, weights: Path, epochs: int = 2, **lora: object) -> RunConfig:
    return RunConfig(
        data=DataConfig(root=str(data), image_size=SIZE, augment="none", val_fraction=0.3),
        model=ModelConfig(backbone=BACKBONE, weights=str(weights)),
        freeze=FreezeSpec(preset="head_only"),
        lora=LoraSpec(targets=(TARGET,), rank=4, alpha=8.0, **lora),  # type: ignore[arg-type]
        optim=OptimConfig(lr=1e-2, schedule="none",
                          groups=(ParamGroupSpec("block", (TARGET,), lr=2e-2),)),
        train=TrainConfig(epochs=epochs, batch_size=4, workers=0, precision="fp32",
                          device="cpu", seed=0, deterministic=True, feature_cache="off",
                          image_cache="off"))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path,
             base_file: Path) -> Path:
    run = tmp_path_factory.mktemp("lora") / "run"
    result = Trainer(lora_config(tiny_dataset, base_file, epochs=2), run).fit()
    assert result.outcome is Outcome.COMPLETED, result.message
    return run


def test_lora_trains_the_adapters_and_the_head_and_leaves_the_base_bit_identical(
        lora_run: Path, base_file: Path) -> None:
    from safetensors.torch import load_file

    base = load_file(base_file)
    state = load_checkpoint(lora_run / "checkpoints" / "last.pt")["model"]
    adapters = [k for k in state if is_adapter(k)]
    # four convolutions of the block adapted: an A and a B matrix each
    assert len(adapters) == 8 and all(k.startswith(TARGET + ".") for k in adapters)
    assert any(state[k].abs().sum() > 0 for k in adapters if ".lora_B." in k)  # B starts at 0
    for key, value in state.items():
        plain = base_name(key)
        if is_adapter(key) or plain.startswith(HEAD + "."):
            continue
        # every base weight, adapted or not, and the frozen BatchNorm statistics
        assert torch.equal(value, base[plain]), key
    assert state[f"{HEAD}.weight"].shape == (3, 1024)  # the new head trained from its own init


def test_the_summary_counts_adapters_and_head(tiny_dataset: Path, base_file: Path,
                                              tmp_path: Path) -> None:
    parts = build_parts(lora_config(tiny_dataset, base_file))
    assert parts.lora is not None and len(parts.lora.layers) == 4
    trainable = {n for n, p in parts.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in parts.names if is_adapter(n) or n.startswith(HEAD + ".")}
    groups = {g["name"]: set(g["param_names"]) for g in parts.optimizer.param_groups}
    assert groups["block"] == {n for n in trainable if n.startswith(TARGET)}  # adapters' group
    line = parts.lora.summary(sum(p.numel() for n, p in parts.model.named_parameters()
                                  if n in trainable))
    assert line == "LoRA: 14,211 of 1.5 M parameters train (4 adapted layers holding 11,136)"


def test_a_lora_run_resumes_exactly_like_an_unbroken_run(
        lora_run: Path, tiny_dataset: Path, base_file: Path, tmp_path: Path) -> None:
    first = Trainer(lora_config(tiny_dataset, base_file, epochs=1), tmp_path / "run").fit()
    assert first.outcome is Outcome.COMPLETED
    resumed = Trainer.resume_run(tmp_path / "run", epochs=2).fit()
    assert resumed.outcome is Outcome.COMPLETED and resumed.epochs_completed == 2
    mine = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    unbroken = load_checkpoint(lora_run / "checkpoints" / "last.pt")["model"]
    assert mine.keys() == unbroken.keys()
    assert all(torch.equal(mine[k], unbroken[k]) for k in unbroken)


def test_export_merges_the_adapters_into_a_plain_verified_model(lora_run: Path,
                                                                 tmp_path: Path) -> None:
    report = export_run(lora_run, "onnx", out=tmp_path / "onnx")
    assert report.verified, [r.to_json() for r in report.results]

    opened = open_run(lora_run)  # what evaluate and predict use: merged, plain layers
    assert not any(is_adapter(n) or "base_layer" in n for n, _ in opened.model.named_parameters())
    # the merged network computes what the adapted one did, and not what the base alone does
    payload = load_checkpoint(lora_run / "checkpoints" / "best.pt")
    adapted = models.get_model(BACKBONE, num_classes=3)
    attach(adapted, opened.config.lora, HEAD, SIZE)
    adapted.load_state_dict(payload["model"])
    adapted.eval()
    plain = models.get_model(BACKBONE, num_classes=3)
    plain.load_state_dict({base_name(k): v for k, v in payload["model"].items()
                           if not is_adapter(k)})
    plain.eval()
    batch = torch.randn(4, 3, SIZE, SIZE)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    onnx_out = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, adapted(batch).numpy(), rtol=1e-4, atol=1e-4)
        assert np.abs(onnx_out - plain(batch).numpy()).max() > 1e-4
    assert np.ptp(onnx_out, axis=0).max() > 1e-3  # the logits depend on the image


def test_a_cached_prefix_ends_before_the_first_adapted_layer(tiny_dataset: Path,
                                                             base_file: Path) -> None:
    parts = build_parts(lora_config(tiny_dataset, base_file))
    split = split_model(parts.model, parts.frozen)
    cached = {n for n, _ in split.prefix.named_parameters()}
    assert "features.10.block.3.0.weight" in cached  # everything before the adapted block
    assert not any(n.startswith(TARGET) for n in cached)
    batch = torch.randn(2, 3, SIZE, SIZE)
    parts.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(split.suffix(split.prefix(batch)), parts.model(batch))


class Attend(nn.Module):
    """nn.MultiheadAttention as torchvision's ViT calls it, and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.mlp = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)[..., :16]
        y, _ = self.attention(x, x, x, need_weights=False)
        return self.head(self.mlp(y).mean(1))


def test_attention_adapters_get_gradients_and_merge_exactly() -> None:
    torch.manual_seed(0)
    model = Attend()
    targets = preset_targets(model, "head", "attention", image_size=4)
    assert targets == ("attention",)  # its output projection comes with it, not the MLP
    attach(model, LoraSpec(targets=targets, rank=2), "head", image_size=4)
    batch = torch.randn(2, 16, 4, 4)
    for _ in range(2):  # B starts at zero: A gets a gradient from the second step on
        model.zero_grad()
        model(batch).sum().backward()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if is_adapter(name):
                    param -= 0.1 * param.grad
    adapter_grads = {n: p.grad for n, p in model.named_parameters() if is_adapter(n)}
    assert adapter_grads and all(g is not None and g.abs().sum() > 0
                                 for g in adapter_grads.values())
    model.eval()
    with torch.no_grad():
        before = model(batch)
        assert merge_adapters(model) == 1
        torch.testing.assert_close(model(batch), before, atol=1e-5, rtol=1e-5)
    assert isinstance(model.attention, nn.MultiheadAttention)
    assert type(model.attention.out_proj).__module__.startswith("torch.nn")


def test_presets_on_a_vision_transformer_and_what_swin_cannot_adapt() -> None:
    vit = describe_model(ModelConfig(backbone="vit_b_16", weights="none"), 3, SIZE)
    attention = preset_targets(vit.model, vit.head, "attention", SIZE)
    assert attention == tuple(f"encoder.layers.encoder_layer_{i}.self_attention"
                              for i in range(12))
    linear = preset_targets(vit.model, vit.head, "linear", SIZE)
    assert len(linear) == 12 * 3 and not any(t.startswith("heads") for t in linear)
    # torchvision's Swin reads attn.qkv's weight itself: an adapter there would never run
    swin = describe_model(ModelConfig(backbone="swin_t", weights="none"), 3, 224)
    assert preset_targets(swin.model, swin.head, "attention", 224) == ()
    with pytest.raises(ConfigError, match=r"'features.1.0.attn.qkv' holds no Linear, Conv2d or "
                                          r"attention layer outside the head that the model "
                                          r"calls"):
        resolve_layers(swin.model, ["features.1.0.attn.qkv"], swin.head, 224)


def test_names_in_a_freeze_spec_mean_the_same_with_adapters(tiny_dataset: Path,
                                                            base_file: Path) -> None:
    parts = build_parts(lora_config(tiny_dataset, base_file))
    conv = f"{TARGET}.block.0.0"
    spec = FreezeSpec(freeze=(f"{conv}.weight",), unfreeze=(TARGET,))
    frozen = resolve_frozen(parts.names, spec, HEAD)
    # unfreezing the block trains its BatchNorms, never the adapted convolutions' own weights
    assert f"{TARGET}.block.0.1.weight" not in frozen
    assert f"{conv}.base_layer.weight" in frozen
    assert f"{conv}.lora_A.default.weight" not in frozen
    with pytest.raises(ConfigError, match=f"LoRA target '{HEAD}'"):
        build_parts(lora_config(tiny_dataset, base_file).replace(
            lora=LoraSpec(targets=(HEAD,))))
