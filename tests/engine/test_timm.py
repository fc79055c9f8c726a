"""timm backbones as a user meets them: ``timm/<name>`` in a config builds, trains, exports and
reopens like a torchvision backbone; pretrained weights offline fail with a sentence naming the
Hugging Face repo and cache; a local timm state dict loads; a model torch.fx cannot trace falls
back to images; without timm the zoo is just torchvision's.

Models are the smallest of each family, random weights, 32-pixel images.
"""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("timm")

from studio.engine import timm_zoo  # noqa: E402
from studio.engine.backbones import (  # noqa: E402
    all_backbones,
    backbone_info,
    build_model,
    describe_model,
    list_backbones,
)
from studio.engine.config import (  # noqa: E402
    DataConfig,
    FreezeSpec,
    HeadConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from studio.engine.errors import BackboneError, WeightsError  # noqa: E402
from studio.engine.export import export_model_onnx  # noqa: E402
from studio.engine.features import SplitRefused, split_model  # noqa: E402
from studio.engine.params import resolve_frozen  # noqa: E402
from studio.engine.parts import build_parts  # noqa: E402
from studio.engine.runs import rebuild_model  # noqa: E402

# (timm name, family): the smallest model of each family timm has, all at 32 px. The export
# uses the TorchScript-based ONNX exporter (dynamo costs ~4 s more a model); two models go
# through the default order, dynamo first, as a user's export does.
DEFAULT_EXPORT = {"test_vit", "test_convnext"}
FAMILIES = [
    ("test_resnet", "resnet"),
    ("test_efficientnet", "efficientnet"),
    ("mobilenetv3_small_050", "mobilenetv3"),
    ("test_convnext", "convnext"),
    ("test_vit", "vision_transformer"),
    ("deit_tiny_patch16_224", "deit"),
    ("regnetx_002", "regnet"),
    ("test_byobnet", "byobnet"),
]


@pytest.fixture(autouse=True)
def params_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Parameter counts go to a temporary cache, not the user's."""
    path = tmp_path / "timm-params.json"
    monkeypatch.setattr(timm_zoo, "params_cache_path", lambda: path)
    return path


def _config(root: Path, backbone: str, **model: Any) -> RunConfig:
    return RunConfig(data=DataConfig(root=str(root), image_size=32, augment="none"),
                     model=ModelConfig(backbone=backbone, weights="none", **model),
                     freeze=FreezeSpec(preset="head_only"),
                     train=TrainConfig(device="cpu", workers=0, batch_size=8))


@pytest.mark.parametrize(("name", "family"), FAMILIES, ids=[n for n, _ in FAMILIES])
def test_a_timm_model_of_each_family_builds_trains_and_exports(
        name: str, family: str, tiny_dataset: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    parts = build_parts(_config(tiny_dataset, f"timm/{name}"))
    try:
        assert backbone_info(f"timm/{name}").family == family
        model, head = parts.model, parts.built.head
        assert parts.built.preprocessing.crop == 32
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(n.startswith(head + ".") for n in trainable)  # head only
        x, y = next(iter(parts.train_loader))
        model.train()
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        loss = parts.criterion(model(x), y)
        loss.backward()
        assert parts.optimizer is not None
        parts.optimizer.step()
        assert torch.isfinite(loss)
        assert any(not torch.equal(before[n], p) for n, p in model.named_parameters()
                   if n in before)
    finally:
        parts.close()
    options = {} if name in DEFAULT_EXPORT else {"exporters": ("torchscript",)}
    result = export_model_onnx(model, tmp_path / "m.onnx", 32, labels=["a", "b", "c"],
                               preprocessing=parts.built.preprocessing, **options)
    assert result.verified and (tmp_path / "m.onnx").is_file()


def test_the_listing_names_timm_models_beside_torchvision_with_counts_once_known(
        params_cache: Path) -> None:
    rows = {info.name: info for info in all_backbones()}
    assert "resnet18" in rows and "timm/resnet18" in rows
    assert len(rows) > len(list_backbones()) + 1000
    info = rows["timm/resnet18"]
    assert info.family == "resnet" and info.input_size == 224
    assert info.default_weights == "a1_in1k" and "tv_in1k" in info.weights
    assert info.params is None  # not counted yet: no made-up number
    assert timm_zoo.count_params(["timm/resnet18"])["timm/resnet18"] == 11_689_512
    assert params_cache.is_file()
    again = {i.name: i for i in all_backbones()}["timm/resnet18"]
    assert again.params == 11_689_512


def test_offline_pretrained_weights_fail_naming_the_repo_and_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    config = ModelConfig(backbone="timm/resnet18", weights="default")
    with pytest.raises(WeightsError) as error:
        build_model(config, 3)
    message = str(error.value)
    assert "timm/resnet18.a1_in1k" in message and str(tmp_path / "hub") in message
    assert "'none'" in message and "local file" in message
    with pytest.raises(WeightsError, match="a1_in1k, a2_in1k"):
        build_model(ModelConfig(backbone="timm/resnet18", weights="no_such_tag"), 3)


def test_a_saved_timm_state_dict_loads_as_weights(tmp_path: Path) -> None:
    source = build_model(ModelConfig(backbone="timm/test_resnet", weights="none"), 5).model
    path = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    built = build_model(ModelConfig(backbone="timm/test_resnet", weights=str(path)), 3)
    assert built.load_report is not None and built.load_report.loaded > 10
    assert any("fc" in s for s in built.load_report.skipped)  # the 5-class head did not fit
    stem = "conv1.0.weight" if "conv1.0.weight" in source.state_dict() else "conv1.weight"
    assert torch.equal(built.model.state_dict()[stem], source.state_dict()[stem])


def test_a_run_reopens_a_timm_checkpoint_strictly(tmp_path: Path) -> None:
    config = RunConfig(data=DataConfig(image_size=32),
                       model=ModelConfig(backbone="timm/test_vit", weights="none",
                                         head=HeadConfig(kind="mlp", hidden=16)))
    built = build_model(config.model, 3, 32)
    state = built.model.state_dict()
    model = rebuild_model(config, ["a", "b", "c"], built.preprocessing.to_json(), state,
                          tmp_path / "best.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), built.model.eval()(x))


def test_fixed_size_models_take_the_image_size_without_weights_and_say_when_weights_fix_it(
        ) -> None:
    built = build_model(ModelConfig(backbone="timm/test_vit", weights="none"), 3, 48)
    assert built.fixed_input_size == 48 and built.preprocessing.crop == 48
    with pytest.raises(BackboneError, match="multiple of 16, such as 16"):
        build_model(ModelConfig(backbone="timm/test_vit", weights="none"), 3, 30)
    with pytest.raises(BackboneError, match="takes 224-pixel images only"):
        build_model(ModelConfig(backbone="timm/vit_tiny_patch16_224", weights="default"), 3, 32)


def test_description_groups_and_head_for_the_param_editors() -> None:
    description = describe_model(ModelConfig(backbone="timm/test_convnext", weights="none"), 4)
    assert description.head == "head.fc"
    frozen = resolve_frozen(description.names, FreezeSpec(preset="head_only"), description.head)
    assert frozen and all(not n.startswith("head.fc.") for n in frozen)
    from studio.engine.layer_decay import description_layer_decay

    groups = description_layer_decay(description, 1e-3)
    assert groups[-1].name == "head" and len(groups) > 3
    assert groups[0].lr < groups[-1].lr


def test_an_untraceable_timm_model_falls_back_to_images_and_a_traceable_one_splits() -> None:
    vit = build_model(ModelConfig(backbone="timm/test_vit", weights="none"), 3, 32).model
    with pytest.raises(SplitRefused, match="cannot be traced with torch.fx"):
        split_model(vit, [n for n, _ in vit.named_parameters() if not n.startswith("head")])
    cnn = build_model(ModelConfig(backbone="timm/test_resnet", weights="none"), 3, 32).model
    cnn.eval()
    split = split_model(cnn, [n for n, _ in cnn.named_parameters() if not n.startswith("fc")])
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(split.suffix.eval()(split.prefix(x)), cnn(x), atol=1e-5)


def test_without_timm_the_zoo_is_torchvision_and_timm_names_say_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_timm(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        monkeypatch.delitem(sys.modules, name)
    timm_zoo.timm_module.cache_clear()
    try:
        assert all_backbones() == list_backbones()
        with pytest.raises(BackboneError, match=r"finetune-studio\[timm\]"):
            build_model(ModelConfig(backbone="timm/resnet18", weights="none"), 3)
        assert build_model(ModelConfig(backbone="resnet18", weights="none"), 3).head == "fc"
    finally:
        timm_zoo.timm_module.cache_clear()


@pytest.mark.parametrize(("name", "layer"), [
    ("test_resnet", "layer4"), ("mobilenetv3_small_050", "blocks.5"),
    ("test_vit", "blocks.5.norm1"), ("deit_tiny_distilled_patch16_224", "blocks.11.norm1")])
def test_class_activation_maps_of_timm_models_look_at_the_last_stage(name: str,
                                                                    layer: str) -> None:
    pytest.importorskip("pytorch_grad_cam")
    from studio.engine.cam import class_activation_map, timm_target

    torch.manual_seed(0)
    size = 32 if name.startswith("deit") else 64  # 2 × 2 patches after 2 prefix tokens
    built = build_model(ModelConfig(backbone=f"timm/{name}", weights="none"), 3, size)
    model = built.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    target = timm_target(model)
    assert target.layer == layer
    heat = class_activation_map(model, torch.randn(1, 3, size, size), 1, target)
    assert heat.shape == (size, size) and np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0


def test_a_timm_run_trains_reopens_and_exports_every_format_verified(
        tiny_dataset: Path, tmp_path: Path) -> None:
    from studio.engine.events import Outcome
    from studio.engine.export import export_run
    from studio.engine.trainer import Trainer

    config = RunConfig(data=DataConfig(root=str(tiny_dataset), image_size=32, augment="none"),
                       model=ModelConfig(backbone="timm/test_efficientnet", weights="none"),
                       train=TrainConfig(epochs=1, batch_size=8, workers=0, device="cpu",
                                         precision="fp32", seed=0))
    result = Trainer(config, tmp_path / "run").fit()
    assert result.outcome is Outcome.COMPLETED, result.message
    for fmt in ("torchscript", "safetensors"):  # ONNX: every family above
        report = export_run(tmp_path / "run", fmt, out=tmp_path / fmt)
        assert report.verified and report.backbone == "timm/test_efficientnet"
        assert [r.format for r in report.results if r.verified] == [fmt]
        assert report.preprocessing["interpolation"] == "bicubic"


def _fake_hub_entry(cache: Path, repo: str, model: torch.nn.Module) -> Path:
    """What ``huggingface-cli download`` leaves in the hub cache: a snapshot and refs/main."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text("{}")
    return snapshot / "model.safetensors"


def test_a_cached_pretrained_tag_loads_offline_through_timm(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1000-class 'pretrained' file is made here; timm finds it in the hub cache and keeps
    every tensor but the classifier, which the new head replaces."""
    import timm
    from huggingface_hub import constants

    from studio.engine.backbones import pretrained_available, resolve_weights

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    weights = resolve_weights("timm/test_resnet", "default")
    assert weights.repo == "timm/test_resnet.r160_in1k"
    assert not pretrained_available(weights)
    torch.manual_seed(1)
    imagenet = timm.create_model("test_resnet", pretrained=False)
    _fake_hub_entry(cache, weights.repo, imagenet)
    assert pretrained_available(weights)
    built = build_model(ModelConfig(backbone="timm/test_resnet", weights="default"), 3, 64)
    assert built.weights == "r160_in1k" and built.preprocessing.crop == 64
    state = built.model.state_dict()
    assert torch.equal(state["conv1.0.weight"], imagenet.state_dict()["conv1.0.weight"])
    assert state["fc.weight"].shape[0] == 3
