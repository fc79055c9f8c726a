"""The zoo: listing, building every model for N classes, heads, and weights from cache or file."""

from __future__ import annotations

import collections
import math
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision import models

from studio.engine.backbones import (
    _skipped_init,
    backbone_info,
    build_model,
    hub_cache_path,
    list_backbones,
    load_weights_file,
    resolve_weights,
)
from studio.engine.config import HeadConfig, ModelConfig
from studio.engine.errors import BackboneError, WeightsError

ZOO = [info.name for info in list_backbones()]


def test_zoo_lists_every_torchvision_classifier_with_metadata() -> None:
    assert set(ZOO) == set(models.list_models(module=models))
    resnet = backbone_info("resnet18")
    assert resnet.params == 11_689_512
    assert resnet.gflops == pytest.approx(1.814)
    assert resnet.acc1 == pytest.approx(69.758)
    assert resnet.input_size == 224
    assert resnet.family == "resnet"
    assert "IMAGENET1K_V1" in resnet.weights
    assert backbone_info("vit_h_14").input_size == 518  # SWAG weights are trained at 518 px
    assert all(info.params > 0 for info in list_backbones())


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(BackboneError, match="unknown backbone 'resnet19'.*studio models"):
        build_model(ModelConfig(backbone="resnet19", weights="none"), 3)


@pytest.mark.zoo
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_builds_for_three_classes(name: str) -> None:
    """Built as a run builds it, at the smallest size it takes (a ViT at ~32 px, not 518), with
    initialisation skipped: what matters is the head and the shapes, not the values (this
    keeps ViT-H and RegNet-128GF near a second each instead of ten)."""
    info = backbone_info(name)
    small = max(32, info.min_size)
    if info.family == "vision_transformer":
        patch = int(name.rsplit("_", 1)[-1])
        small = patch * math.ceil(32 / patch)
    with _skipped_init():
        built = build_model(ModelConfig(backbone=name, weights="none"), num_classes=3,
                            image_size=small)
    size = built.fixed_input_size or small
    built.model.eval()
    with torch.no_grad():
        out = built.model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 3)
    head = built.model.get_submodule(built.head)
    assert sum(p.numel() for p in head.parameters()) > 0
    assert built.preprocessing.crop == size


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1", "vit_b_32", "efficientnet_b0"])
def test_mlp_head_has_hidden_layer_and_dropout(name: str) -> None:
    head = HeadConfig(kind="mlp", hidden=64, dropout=0.3)
    built = build_model(ModelConfig(backbone=name, weights="none", head=head), num_classes=4)
    module = built.model.get_submodule(built.head)
    assert isinstance(module, nn.Sequential)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in module)
    size = built.fixed_input_size or 64
    built.model.eval()
    with torch.no_grad():
        assert built.model(torch.randn(1, 3, size, size)).shape == (1, 4)


def test_image_size_override_changes_preprocessing_and_vit_size() -> None:
    built = build_model(ModelConfig(backbone="resnet18", weights="none"), 3, image_size=64)
    assert (built.preprocessing.resize, built.preprocessing.crop) == (73, 64)
    vit = build_model(ModelConfig(backbone="vit_b_32", weights="none"), 3, image_size=64)
    assert vit.fixed_input_size == 64
    with torch.no_grad():
        assert vit.model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(BackboneError, match="at least 17 pixels"):
        build_model(ModelConfig(backbone="squeezenet1_1", weights="none"), 3, image_size=16)


# ---------------------------------------------------------------------------------------------
# Pretrained weights through torch hub's cache


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_cached_pretrained_weights_load_and_head_is_replaced(hub_dir: Path) -> None:
    weights = resolve_weights("squeezenet1_1", "default")
    imagenet = models.squeezenet1_1(weights=None)
    path = hub_cache_path(weights)
    path.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), path)

    built = build_model(ModelConfig(backbone="squeezenet1_1", weights="default"), 5)
    assert built.weights == weights.name
    assert torch.equal(built.model.features[0].weight, imagenet.features[0].weight)
    assert built.model.get_submodule(built.head).out_channels == 5
    assert built.preprocessing.crop == 224 and built.preprocessing.resize == 256


def test_uncached_weights_offline_name_the_file_and_where_to_put_it(
        hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # studio.engine.downloads' way out
    weights = resolve_weights("squeezenet1_1", "default")
    with pytest.raises(WeightsError) as caught:
        build_model(ModelConfig(backbone="squeezenet1_1", weights="default"), 3)
    message = str(caught.value)
    assert weights.url in message
    assert str(hub_cache_path(weights)) in message
    assert "weights 'none'" in message


def test_a_damaged_cache_file_is_named(hub_dir: Path) -> None:
    path = hub_cache_path(resolve_weights("squeezenet1_1", "default"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="damaged"):
        build_model(ModelConfig(backbone="squeezenet1_1", weights="default"), 3)


def test_weights_names_resolve() -> None:
    assert resolve_weights("resnet50", "IMAGENET1K_V1").name == "IMAGENET1K_V1"
    assert resolve_weights("resnet50", "none") is None
    with pytest.raises(WeightsError, match="IMAGENET1K_V2"):
        resolve_weights("resnet50", "IMAGENET9K")


# ---------------------------------------------------------------------------------------------
# Local weights files


def _fine_tuned(num_classes: int = 3) -> nn.Module:
    return build_model(ModelConfig(backbone="resnet18", weights="none"), num_classes).model


def test_pth_with_module_prefix_loads_fully(tmp_path: Path) -> None:
    source = _fine_tuned()
    wrapped = collections.OrderedDict((f"module.{k}", v) for k, v in source.state_dict().items())
    path = tmp_path / "ddp.pth"
    torch.save({"epoch": 3, "state_dict": wrapped}, path)
    built = build_model(ModelConfig(backbone="resnet18", weights=str(path)), 3)
    assert built.load_report is not None
    assert not built.load_report.skipped and not built.load_report.missing
    for key, value in source.state_dict().items():
        assert torch.equal(built.model.state_dict()[key], value), key


def test_safetensors_with_imagenet_head_skips_the_head(tmp_path: Path) -> None:
    imagenet = models.resnet18(weights=None)
    path = tmp_path / "imagenet.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in imagenet.state_dict().items()}, path)
    built = build_model(ModelConfig(backbone="resnet18", weights=str(path)), 4)
    report = built.load_report
    assert report is not None
    assert sorted(s.split(":")[0] for s in report.skipped) == ["fc.bias", "fc.weight"]
    assert "skipped 2 of another shape" in report.summary()
    assert torch.equal(built.model.conv1.weight, imagenet.conv1.weight)
    assert built.model.fc.out_features == 4


def test_missing_and_unexpected_keys_are_reported(tmp_path: Path) -> None:
    state = _fine_tuned().state_dict()
    del state["layer4.1.conv2.weight"]
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    report = load_weights_file(_fine_tuned(), path)
    assert report.missing == ("layer4.1.conv2.weight",)
    assert report.unexpected == ("extra.weight",)


class Payload:
    """Not a tensor: unpickling this would run code, so it must be refused."""


def test_pickled_objects_are_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _fine_tuned().state_dict(), "payload": Payload()}, path)
    with pytest.raises(WeightsError, match="never loads code"):
        build_model(ModelConfig(backbone="resnet18", weights=str(path)), 3)


@pytest.mark.parametrize("content,suffix,match", [
    (b"garbage", ".pth", "cannot be read"),
    (b"garbage", ".safetensors", "not a valid safetensors"),
    (b"", ".onnx", "not a weights file"),
])
def test_bad_weights_files_are_clear_errors(tmp_path: Path, content: bytes, suffix: str,
                                            match: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=match):
        build_model(ModelConfig(backbone="resnet18", weights=str(path)), 3)


def test_weights_for_another_model_fit_nothing(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"alpha": torch.zeros(3), "beta": torch.ones(2, 2)}, path)
    with pytest.raises(WeightsError, match="none of the 2 tensors"):
        build_model(ModelConfig(backbone="resnet18", weights=str(path)), 3)


def test_missing_weights_file() -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        build_model(ModelConfig(backbone="resnet18", weights="/nowhere/w.pth"), 3)
