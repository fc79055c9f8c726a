"""Why the model decides: Grad-CAM class-activation maps (the ``grad-cam`` package).

A map says which parts of the image raised the score of one class. It is taken at one layer per
family (:data:`TARGET_LAYERS`): the last convolutional stage of a CNN, or the last token grid of
a transformer, reshaped to channels × rows × cols. :func:`class_activation_map` returns a float
map in [0, 1] of the model input's size; :func:`overlay` blends it, coloured, over the image the
model saw (the resized, centre-cropped picture, not the whole file). :class:`Explainer` answers
for image files with a run's :class:`~studio.engine.evaluate.Predictor`.

``grad-cam`` is optional (``pip install 'finetune-studio[explain]'``); without it
:func:`require_grad_cam` raises one sentence saying so. Maps need gradients, so they are computed
with gradients on, in fp32, from an input that requires them: a model loaded for evaluation
(every parameter frozen) still yields the gradients at the target layer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from studio.engine.errors import DatasetError, StudioError

if TYPE_CHECKING:
    from studio.engine.evaluate import Predictor

CAM_CLASSES = ("predicted", "true")  # which class a map explains
DEFAULT_OPACITY = 0.5
INSTALL_HINT = "pip install 'finetune-studio[explain]'"


class CamUnavailable(StudioError):
    """The optional grad-cam package is missing."""


def grad_cam_installed() -> bool:
    return importlib.util.find_spec("pytorch_grad_cam") is not None


def require_grad_cam() -> None:
    if not grad_cam_installed():
        raise CamUnavailable(f"class-activation maps need the grad-cam package; install it "
                             f"with {INSTALL_HINT}")


# ---------------------------------------------------------------------------------------------
# Where to look, per family


@dataclass(frozen=True, slots=True)
class CamTarget:
    """The module whose output is mapped, and how its output becomes (B, C, rows, cols):
    ``none`` (already so), ``tokens`` (ViT: drop the class token, square grid) or
    ``channels_last`` ((B, H, W, C), as torchvision's Swin keeps it)."""

    layer: str
    reshape: str = "none"


# family (studio.engine.backbones.BackboneInfo.family) → target. The ViT target is the input
# norm of the last block: after that block only the class token reaches the head, so the patch
# tokens' gradients there are zero (the grad-cam documentation's advice).
TARGET_LAYERS: dict[str, CamTarget] = {
    "alexnet": CamTarget("features"),
    "convnext": CamTarget("features.-1"),
    "densenet": CamTarget("features"),
    "efficientnet": CamTarget("features.-1"),
    "googlenet": CamTarget("inception5b"),
    "inception": CamTarget("Mixed_7c"),
    "maxvit": CamTarget("blocks.-1"),
    "mnasnet": CamTarget("layers"),
    "mobilenetv2": CamTarget("features.-1"),
    "mobilenetv3": CamTarget("features.-1"),
    "regnet": CamTarget("trunk_output"),
    "resnet": CamTarget("layer4"),  # resnet, resnext and wide_resnet
    "shufflenetv2": CamTarget("conv5"),
    "squeezenet": CamTarget("features"),
    "swin_transformer": CamTarget("norm", "channels_last"),  # swin_* and swin_v2_*
    "vgg": CamTarget("features"),
    "vision_transformer": CamTarget("encoder.layers.-1.ln_1", "tokens"),
}


def target_for(model: nn.Module, family: str) -> CamTarget:
    """The family's target, or the last 2-D convolution of a model of an unknown family."""
    if family in TARGET_LAYERS:
        return TARGET_LAYERS[family]
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise StudioError(f"no layer of the {family} model can be mapped (it has no "
                          f"convolution); class-activation maps are not available for it")
    return CamTarget(convs[-1])


def timm_target(model: nn.Module) -> CamTarget:
    """A timm model's target from its ``feature_info``: the last stage (a ViT's last block's
    input norm, token grid; Swin's NHWC stage), or the last convolution when it has none."""
    info = getattr(model, "feature_info", None)
    try:
        layer = str(info[-1]["module"])  # type: ignore[index]
        find_module(model, layer)
    except (TypeError, IndexError, KeyError, AttributeError):
        return target_for(model, "")
    if getattr(model, "num_prefix_tokens", None) is not None:  # ViT-like: (B, tokens, C)
        norm = f"{layer}.norm1"
        with contextlib.suppress(AttributeError, IndexError):
            find_module(model, norm)
            return CamTarget(norm, "tokens")
        return CamTarget(layer, "tokens")
    if str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC"):
        return CamTarget(layer, "channels_last")
    return CamTarget(layer)


def find_module(model: nn.Module, path: str) -> nn.Module:
    """``features.-1`` → model.features[-1]: dotted names where a negative part indexes."""
    module = model
    for part in path.split("."):
        if part.lstrip("-").isdigit():
            module = list(module.children())[int(part)]  # type: ignore[assignment]
        else:
            module = getattr(module, part)
    return module


def _tokens_to_grid(tensor: torch.Tensor) -> torch.Tensor:
    """(B, k + rows·cols, C) → (B, C, rows, cols): the k leading class (distillation,
    register) tokens dropped — none in a ViT that pools its patches — the grid square."""
    side = math.isqrt(tensor.shape[1])  # k ≤ 2·side: the largest square is the grid
    patches = tensor[:, tensor.shape[1] - side * side:, :]
    return patches.reshape(tensor.shape[0], side, side, tensor.shape[2]).permute(0, 3, 1, 2)


def _channels_first(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 3, 1, 2)


RESHAPES = {"none": None, "tokens": _tokens_to_grid, "channels_last": _channels_first}


# ---------------------------------------------------------------------------------------------
# Maps and overlays


def class_activation_map(model: nn.Module, batch: torch.Tensor, class_index: int,
                         target: CamTarget) -> np.ndarray:
    """Grad-CAM of ``class_index`` for one preprocessed image (1, 3, H, W): float32 (H, W) in
    [0, 1] (all zeros where nothing raised the class). The model is put in eval mode; its
    parameters' ``requires_grad`` is switched off meanwhile, and restored."""
    return _grad_cam(model, batch, class_index, target)[0]


def _grad_cam(model: nn.Module, batch: torch.Tensor, class_index: int | None,
              target: CamTarget) -> tuple[np.ndarray, torch.Tensor]:
    """The map of ``class_index`` (None: the highest-scoring class) and the logits (C,) of the
    same forward pass."""
    require_grad_cam()
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = find_module(model, target.layer)
    # fp32, and the gradient flows from the input rather than the weights: a frozen model's
    # target layer still gets one, and no weight gradient is computed (or left behind)
    device = next(model.parameters()).device
    x = batch.detach().to(device=device, dtype=torch.float32).requires_grad_(True)
    targets = None if class_index is None else [ClassifierOutputTarget(int(class_index))]
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad(), \
                GradCAM(model=model, target_layers=[layer],
                        reshape_transform=RESHAPES[target.reshape]) as cam:
            maps = cam(input_tensor=x, targets=targets)
            logits = cam.outputs[0].detach().float().cpu()
    finally:
        for p in trainable:
            p.requires_grad_(True)
    return np.clip(np.asarray(maps[0], dtype=np.float32), 0.0, 1.0), logits


def _jet(heat: np.ndarray) -> np.ndarray:
    """The jet colour map (blue → cyan → yellow → red) as uint8 RGB, no OpenCV needed."""
    v = np.clip(heat, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.concatenate([r, g, b], axis=-1) * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """``image`` (H, W, 3 uint8) with the coloured ``heat`` blended over it: opacity 0 is the
    image, 1 the heat map alone. A map of another size is resized to the image's."""
    if heat.shape != image.shape[:2]:
        resized = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(
            (image.shape[1], image.shape[0]), Image.Resampling.BILINEAR)
        heat = np.asarray(resized, dtype=np.float32) / 255
    heat = np.nan_to_num(heat, nan=0.0)
    alpha = float(np.clip(opacity, 0.0, 1.0))
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * _jet(heat).astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Image files, with a run's model


@dataclass(frozen=True, slots=True)
class Explanation:
    """One image's map for one class: plain arrays, no tensors (safe to hand to any thread)."""

    path: str
    class_index: int
    label: str  # the class explained
    predicted: str
    probability: float  # of the class explained
    image: np.ndarray  # (H, W, 3) uint8: what the model saw (resized, centre-cropped)
    heat: np.ndarray  # (H, W) float32 in [0, 1]

    def overlay(self, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
        return overlay(self.image, self.heat, opacity)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "class": self.label, "predicted": self.predicted,
                "probability": self.probability}


class Explainer:
    """Grad-CAM for image files with a run's loaded model (a Predictor; shares its lock, so a
    prediction in another thread never sees the map's hooks)."""

    def __init__(self, predictor: Predictor) -> None:
        require_grad_cam()
        from studio.engine.backbones import backbone_info
        from studio.engine.images import transform_parts

        self.predictor = predictor
        self.labels = predictor.labels
        backbone = predictor.run.config.model.backbone
        if backbone.startswith("timm/"):
            self.target = timm_target(predictor.model)
        else:
            self.target = target_for(predictor.model, backbone_info(backbone).family)
        decode, tail = transform_parts(predictor.run.prep())
        self._decode, self._tail = decode, tail

    def class_index(self, name: str) -> int:
        if name not in self.labels:
            raise DatasetError(f"{name!r} is not a class of the run ({', '.join(self.labels[:5])}"
                               f"{'…' if len(self.labels) > 5 else ''}); name one of its classes")
        return self.labels.index(name)

    def explain(self, path: str | os.PathLike[str], class_name: str | None = None
                ) -> Explanation:
        """The map of ``class_name`` (the predicted class when None) for one image file."""
        from torchvision.transforms import v2 as T

        from studio.engine.evaluate import read_image

        image = read_image(path)
        for step in self._decode:
            image = step(image)
        seen = np.asarray(image.convert("RGB"), dtype=np.uint8)
        batch = T.Compose([T.ToImage(), *self._tail])(image).unsqueeze(0)
        wanted = None if class_name is None else self.class_index(class_name)
        with self.predictor.lock:  # one pass: the map, and the probabilities it explains
            heat, logits = _grad_cam(self.predictor.model, batch, wanted, self.target)
        probs = torch.softmax(logits, dim=0)
        predicted = int(probs.argmax())
        index = predicted if wanted is None else wanted
        return Explanation(str(path), index, self.labels[index], self.labels[predicted],
                           float(probs[index]), seen, heat)
