"""Class-activation maps: a target layer per family, a finite map of the input's size, overlays,
and the maps of a trained run's model (frozen for evaluation) for image files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from studio.engine.backbones import _skipped_init, backbone_info, build_model, list_backbones
from studio.engine.cam import (
    TARGET_LAYERS,
    Explainer,
    class_activation_map,
    find_module,
    overlay,
    target_for,
)
from studio.engine.config import ModelConfig
from studio.engine.errors import DatasetError
from studio.engine.evaluate import Predictor

pytest.importorskip("pytorch_grad_cam")

ZOO = list_backbones()
FAMILIES = sorted({info.family for info in ZOO})
# the smallest model of each family stands for it in the quick test
SMALLEST = {family: min((i for i in ZOO if i.family == family), key=lambda i: i.params).name
            for family in FAMILIES}


def _small_size(name: str) -> int:
    """The smallest input the model takes (ViTs are built for it), at least 64 px so that a
    CNN's last stage keeps a grid of more than one cell."""
    info = backbone_info(name)
    if info.family == "vision_transformer":
        patch = int(name.rsplit("_", 1)[-1])
        return patch * math.ceil(64 / patch)
    return max(64, info.min_size)


def _map_of(name: str) -> tuple[np.ndarray, int]:
    """Built without its costly initialisation (MaxViT's and VGG's take seconds), then filled
    with small random values: what matters is that gradients reach the target layer."""
    size = _small_size(name)
    with _skipped_init():
        built = build_model(ModelConfig(backbone=name, weights="none"), num_classes=3,
                            image_size=size)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in built.model.parameters():
            p.normal_(0, 0.05)
    for module in built.model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    model = built.model.eval()
    for p in model.parameters():  # as a run is loaded for evaluation
        p.requires_grad_(False)
    size = built.fixed_input_size or size
    target = target_for(model, backbone_info(name).family)
    heat = class_activation_map(model, torch.randn(1, 3, size, size), 1, target)
    return heat, size


def test_every_family_has_a_target_layer() -> None:
    assert set(FAMILIES) <= set(TARGET_LAYERS)


@pytest.mark.parametrize("family", FAMILIES)
def test_cam_per_family_is_a_finite_map_of_the_input_size(family: str) -> None:
    """The smallest model of each family, frozen as for evaluation, on CPU in fp32."""
    heat, size = _map_of(SMALLEST[family])
    assert heat.shape == (size, size)
    assert heat.dtype == np.float32
    assert np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0


@pytest.mark.zoo
@pytest.mark.full_zoo
@pytest.mark.parametrize("name", [info.name for info in ZOO])
def test_cam_for_every_zoo_model(name: str) -> None:
    heat, size = _map_of(name)
    assert heat.shape == (size, size)
    assert np.isfinite(heat).all()


def test_target_layers_name_modules_of_their_models() -> None:
    model = build_model(ModelConfig(backbone="resnet18", weights="none"), 3).model
    assert find_module(model, "layer4") is model.layer4
    mobile = build_model(ModelConfig(backbone="mobilenet_v3_small", weights="none"), 3).model
    assert find_module(mobile, "features.-1") is mobile.features[-1]


def test_unknown_family_falls_back_to_the_last_convolution() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    target = target_for(model, "something_new")
    assert target.layer == "2"
    heat = class_activation_map(model, torch.randn(1, 3, 20, 20), 0, target)
    assert heat.shape == (20, 20)


def test_overlay_blends_with_opacity() -> None:
    image = np.full((8, 8, 3), 128, dtype=np.uint8)
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[:, 4:] = 1.0
    assert np.array_equal(overlay(image, heat, 0.0), image)
    half, full = overlay(image, heat, 0.5), overlay(image, heat, 1.0)
    assert tuple(full[0, 7]) == (128, 0, 0)  # jet's hot end is dark red
    assert tuple(full[0, 0]) == (0, 0, 128)  # its cold end dark blue
    assert half[0, 7, 0] == 128 and half[0, 7, 2] == 64
    small = overlay(np.zeros((16, 16, 3), np.uint8), heat, 1.0)  # the map is resized
    assert small.shape == (16, 16, 3)


def test_explainer_maps_a_trained_runs_images(trained_run: Path) -> None:
    predictor = Predictor(trained_run, device="cpu")
    for p in predictor.model.parameters():  # frozen, as a model loaded for evaluation may be
        p.requires_grad_(False)
    explainer = Explainer(predictor)
    image = next(Path(predictor.run.data_root).glob("red/*.png"))
    predicted = explainer.explain(image)
    assert predicted.label == predicted.predicted
    assert predicted.image.shape == (32, 32, 3) and predicted.heat.shape == (32, 32)
    assert np.isfinite(predicted.heat).all()
    true = explainer.explain(image, "red")
    assert true.label == "red" and true.class_index == predictor.labels.index("red")
    assert true.overlay(0.6).shape == (32, 32, 3)
    with pytest.raises(DatasetError, match="'purple' is not a class of the run"):
        explainer.explain(image, "purple")
    with pytest.raises(DatasetError, match="does not exist"):
        explainer.explain(trained_run / "missing.png")
    # a prediction after a map: the hooks are gone, the answer unchanged
    assert predictor.predict(image).top[0][0] == predicted.predicted


def test_a_map_leaves_no_gradients_and_restores_requires_grad() -> None:
    model = build_model(ModelConfig(backbone="resnet18", weights="none"), 3).model
    frozen = model.fc.weight
    frozen.requires_grad_(False)
    class_activation_map(model, torch.randn(1, 3, 64, 64), 0, target_for(model, "resnet"))
    assert all(p.grad is None for p in model.parameters())
    assert not frozen.requires_grad and model.layer1[0].conv1.weight.requires_grad
