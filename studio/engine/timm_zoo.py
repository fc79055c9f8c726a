"""The timm zoo (the optional ``finetune-studio[timm]`` extra): listing, building, weights.

Every timm model is named ``timm/<architecture>`` in a run config; :mod:`studio.engine.backbones`
sends such names here. Pretrained weights are timm's own: ``timm.create_model(pretrained=True)``
reads them from the Hugging Face hub cache (``HF_HUB_CACHE``), downloading them when online.
Preprocessing follows the model's ``pretrained_cfg`` (input size, crop fraction, mean, std,
interpolation), as timm's ``resolve_model_data_config`` reads it.

Parameter counts need a (meta-device) build of every model — minutes for the ~1400 of them — so
the listing shows the counts known so far (``params`` None otherwise), and
:func:`count_params` fills an on-disk cache keyed by the timm version.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs
import torch
from torch import nn

from studio.engine.errors import BackboneError, WeightsError
from studio.engine.images import Preprocessing
from studio.format import first_line

if TYPE_CHECKING:
    from studio.engine.backbones import BackboneInfo

log = logging.getLogger(__name__)

PREFIX = "timm/"
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def is_timm(name: str) -> bool:
    return name.startswith(PREFIX)


@functools.cache
def timm_module() -> Any | None:
    """timm, or None when the extra is not installed (then no timm rows are listed)."""
    try:
        import timm
        import timm.data  # noqa: F401 - resolve_model_data_config
    except ImportError:
        return None
    return timm


def available() -> bool:
    return timm_module() is not None


def _require() -> Any:
    timm = timm_module()
    if timm is None:
        raise BackboneError("timm backbones need the timm package; install it with "
                            "pip install 'finetune-studio[timm]', or choose a torchvision "
                            "backbone")
    return timm


def arch(name: str) -> str:
    """``timm/resnet18`` → ``resnet18``, checked against timm's registry."""
    timm = _require()
    architecture = name[len(PREFIX):] if is_timm(name) else name
    if architecture not in _architectures():
        raise BackboneError(f"unknown backbone {name!r}; timm {timm.__version__} has no model "
                            f"{architecture!r} (`studio models timm/` lists them, for example "
                            f"timm/resnet18)")
    return architecture


@functools.cache
def _architectures() -> frozenset[str]:
    return frozenset(_require().list_models())


@functools.cache
def _tags() -> dict[str, tuple[str, ...]]:
    """Architecture → its pretrained tags (``resnet18`` → ``a1_in1k``, …), timm's order."""
    tags: dict[str, list[str]] = {}
    for full in _require().list_pretrained():
        architecture, _, tag = full.partition(".")
        tags.setdefault(architecture, []).append(tag)
    return {k: tuple(v) for k, v in tags.items()}


def _cfg(architecture: str, tag: str | None = None) -> Any:
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(f"{architecture}.{tag}" if tag else architecture)


def family(architecture: str) -> str:
    """The timm module a model comes from: ``resnet``, ``vision_transformer``, ``convnext``."""
    from timm.models import model_entrypoint

    return model_entrypoint(architecture).__module__.rsplit(".", 1)[-1]


# ---------------------------------------------------------------------------------------------
# Listing


@functools.cache
def _static_infos() -> tuple[BackboneInfo, ...]:
    from studio.engine.backbones import BackboneInfo

    tags = _tags()
    infos = []
    for architecture in sorted(_architectures()):
        cfg = _cfg(architecture)
        own = tags.get(architecture, ())
        default = cfg.tag if cfg is not None and cfg.tag in own else (own[0] if own else None)
        size = int(cfg.input_size[-1]) if cfg is not None else 224
        low = cfg.min_input_size if cfg is not None and cfg.min_input_size else None
        infos.append(BackboneInfo(
            name=PREFIX + architecture, family=family(architecture), params=None, gflops=None,
            acc1=None, acc5=None, input_size=size, min_size=int(low[-1]) if low else 1,
            weights=own, default_weights=default, file_size_mb=None))
    return tuple(infos)


def list_backbones() -> tuple[BackboneInfo, ...]:
    """Every timm model as ``timm/<name>``, parameter counts where known (cached on disk);
    empty when timm is not installed."""
    if not available():
        return ()
    counts = known_params()
    return tuple(replace(i, params=counts.get(i.name)) for i in _static_infos())


def backbone_info(name: str) -> BackboneInfo:
    """The listing's row of ``name``; its parameter count only if known (counting builds the
    model: :func:`count_params`, never on the way to something else)."""
    architecture = arch(name)
    for info in _static_infos():
        if info.name == PREFIX + architecture:
            return replace(info, params=known_params().get(info.name))
    raise BackboneError(f"unknown backbone {name!r}")  # pragma: no cover - arch() checked


# ---------------------------------------------------------------------------------------------
# Parameter counts, cached on disk


def params_cache_path() -> Path:
    """``timm-<version>-params.json`` in Studio's cache folder (``$STUDIO_CACHE_DIR`` if set)."""
    name = f"timm-{_require().__version__}-params.json"
    if os.environ.get("STUDIO_CACHE_DIR"):
        return Path(os.environ["STUDIO_CACHE_DIR"]) / name
    return platformdirs.user_cache_path("finetune-studio", appauthor=False) / name


_cache_lock = threading.Lock()


def known_params() -> dict[str, int]:
    """Counts computed before (by any process), from the cache file; {} when there is none."""
    try:
        data = json.loads(params_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def count_params(names: Iterable[str], progress: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None) -> dict[str, int]:
    """Count the parameters (1000-class head) of ``names`` not counted yet, on the meta device,
    and add them to the cache; returns every known count. Models that cannot be built on the
    meta device are counted on the CPU without initialising their weights."""
    from studio.engine.backbones import _skipped_init

    known = known_params()
    todo = [n for n in dict.fromkeys(names) if n not in known]
    timm = _require()
    for done, name in enumerate(todo):
        if cancel is not None and cancel.is_set():
            break
        try:
            try:
                with torch.device("meta"):
                    model = timm.create_model(arch(name), pretrained=False)
            except (NotImplementedError, RuntimeError):
                with _skipped_init():
                    model = timm.create_model(arch(name), pretrained=False)
            known[name] = sum(p.numel() for p in model.parameters())
        except Exception:  # a model timm cannot build here: its count stays unknown
            log.info("cannot count the parameters of %s", name, exc_info=True)
        if progress is not None:
            progress(done + 1, len(todo))
        if (done + 1) % 50 == 0:
            _save_counts(known)
    if todo:
        _save_counts(known)
    return known


def _save_counts(counts: dict[str, int]) -> None:
    """Merge into the cache file atomically; a cache that cannot be written is only slower."""
    path = params_cache_path()
    with _cache_lock, contextlib.suppress(OSError):
        merged = {**known_params(), **counts}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(merged, out, sort_keys=True)
            os.replace(temp, path)
        except OSError:
            Path(temp).unlink(missing_ok=True)
            raise


# ---------------------------------------------------------------------------------------------
# Weights


@dataclass(frozen=True)
class TimmWeights:
    """A timm pretrained tag and where Hugging Face keeps it."""

    architecture: str
    name: str  # the tag, e.g. a1_in1k
    repo: str  # the Hugging Face repo id, e.g. timm/resnet18.a1_in1k

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}"


def resolve_weights(name: str, spec: str) -> TimmWeights | None:
    """'default' → the default tag; 'none' → None; a tag name → that tag."""
    architecture = arch(name)
    if spec == "none":
        return None
    tags = _tags().get(architecture, ())
    if spec == "default":
        info = next(i for i in _static_infos() if i.name == PREFIX + architecture)
        if info.default_weights is None:
            raise WeightsError(f"{name} has no pretrained weights in timm; choose weights "
                               f"'none' or a local file")
        spec = info.default_weights
    tag = spec.removeprefix(f"{architecture}.")
    if tag not in tags:
        listed = ", ".join(tags) if tags else "none has pretrained tags"
        raise WeightsError(f"{spec!r} is not a pretrained tag of {name}; use default, none, "
                           f"{listed}, or a .safetensors/.pth file")
    cfg = _cfg(architecture, tag)
    repo = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else f"timm/{architecture}.{tag}"
    return TimmWeights(architecture, tag, repo)


def hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_file(weights: TimmWeights) -> Path | None:
    """The weights file in the Hugging Face cache, or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    for filename in _WEIGHT_FILES:
        found = try_to_load_from_cache(weights.repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def pretrained_available(weights: TimmWeights) -> bool:
    return cached_file(weights) is not None


# ---------------------------------------------------------------------------------------------
# Building


def create(name: str, weights: TimmWeights | None, num_classes: int,
           image_size: int | None) -> tuple[nn.Module, int | None]:
    """The timm model for ``num_classes`` and the one input size it accepts (None: any)."""
    timm = _require()
    architecture = arch(name)
    cfg = _cfg(architecture, weights.name if weights is not None else None)
    fixed_size = bool(cfg is not None and cfg.fixed_input_size)
    natural = int(cfg.input_size[-1]) if cfg is not None else 224
    kwargs: dict[str, Any] = {}
    if fixed_size and weights is None and image_size is not None:
        kwargs["img_size"] = image_size
    if fixed_size and weights is not None and image_size is not None and image_size != natural:
        raise BackboneError(f"{name} with pretrained weights {weights.name} takes "
                            f"{natural}-pixel images only; set the image size to {natural} or "
                            f"choose weights 'none'")
    full = f"{architecture}.{weights.name}" if weights is not None else architecture
    try:
        model = timm.create_model(full, pretrained=weights is not None,
                                  num_classes=num_classes, **kwargs)
    except (AssertionError, ValueError, TypeError) as error:
        if weights is not None and not _is_offline_error(error):
            raise
        if weights is None:
            size = f"{image_size}-pixel" if image_size is not None else f"{natural}-pixel"
            raise BackboneError(f"{name} cannot be built for {size} images "
                                f"({first_line(error)}); choose another image size") from error
        raise _not_cached(name, weights, error) from error
    except (OSError, RuntimeError) as error:
        if weights is None:
            raise
        if _is_offline_error(error):
            raise _not_cached(name, weights, error) from error
        raise WeightsError(f"the cached timm weights {weights.repo} do not load into {name} "
                           f"({first_line(error)}); delete them from {hub_cache()} so that they "
                           f"are downloaded again, or choose weights 'none'") from error
    size = kwargs.get("img_size", natural) if fixed_size else None
    patch = _patch_size(model)
    if size is not None and patch and size % patch:
        raise BackboneError(f"{name} cuts images into {patch}-pixel patches; choose an image "
                            f"size that is a multiple of {patch}, such as "
                            f"{max(patch, size // patch * patch)}")
    return model, size


def _patch_size(model: nn.Module) -> int | None:
    """The patch side a ViT-like model's input must be a multiple of (timm's PatchEmbed
    asserts it unless it pads, or checks the exact size instead), or None."""
    embed = getattr(model, "patch_embed", None)
    if getattr(embed, "strict_img_size", True) or getattr(embed, "dynamic_img_pad", False):
        return None
    patch = getattr(embed, "patch_size", None)
    if isinstance(patch, tuple | list) and patch:
        patch = patch[0]
    return int(patch) if isinstance(patch, int) and patch > 1 else None


def _is_offline_error(error: BaseException) -> bool:
    """A download that could not happen (no network, HF_HUB_OFFLINE, a missing cache entry)."""
    from huggingface_hub import errors as hf_errors

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, hf_errors.LocalEntryNotFoundError | hf_errors.OfflineModeIsEnabled
                      | ConnectionError | TimeoutError):
            return True
        if "offline" in str(seen).lower() or "connect" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _not_cached(name: str, weights: TimmWeights, error: BaseException) -> WeightsError:
    return WeightsError(
        f"pretrained weights {weights.repo} for {name} are not in the Hugging Face cache "
        f"{hub_cache()} and could not be downloaded ({first_line(error)}); download the "
        f"repo {weights.repo} into that cache (huggingface-cli download {weights.repo}), "
        f"or choose weights 'none' or a local file")


def head_name(model: nn.Module) -> str:
    """The qualified module name of timm's classifier (``fc``, ``head.fc``, ``classifier``)."""
    classifier = model.get_classifier()  # type: ignore[operator]
    if isinstance(classifier, tuple | list):  # distilled DeiT: (head, head_dist)
        classifier = classifier[0]
    for name, module in model.named_modules():
        if module is classifier and name:
            return name
    raise BackboneError(f"cannot find the classifier head of {type(model).__name__}")


def preprocessing(model: nn.Module) -> Preprocessing:
    """Resize/crop/mean/std/interpolation from the model's ``pretrained_cfg``."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    crop = int(config["input_size"][-1])
    crop_pct = float(config.get("crop_pct") or 1.0)
    resize = max(crop, math.floor(crop / crop_pct))
    interpolation = str(config.get("interpolation") or "bilinear")
    if interpolation not in _INTERPOLATIONS:
        interpolation = "bicubic" if interpolation == "random" else "bilinear"
    mean = tuple(float(v) for v in config["mean"])
    std = tuple(float(v) for v in config["std"])
    if len(mean) != 3 or len(std) != 3:  # a one-channel model: Studio feeds RGB
        mean, std = (mean[0],) * 3, (std[0],) * 3
    return Preprocessing(resize, crop, mean, std, interpolation)  # type: ignore[arg-type]


def layer_ids(model: nn.Module, names: Iterable[str], head: str) -> dict[str, int] | None:
    """Layer ids from timm's own ``group_matcher`` (stem 0 … head last), or None when the
    model has none."""
    from timm.models import group_parameters

    if not hasattr(model, "group_matcher"):
        return None
    try:
        groups = group_parameters(model, model.group_matcher(coarse=False), reverse=False)
    except Exception:  # a model whose matcher does not cover it
        log.info("timm group_matcher failed for %s", type(model).__name__, exc_info=True)
        return None
    wanted = list(names)
    ids = {n: int(g) for g, members in groups.items() for n in members}
    top = max(ids.values(), default=0) + 1
    return {n: top if n == head or n.startswith(head + ".") else ids.get(n, top) for n in wanted}
