"""Image files to tensors: robust loading, preprocessing, augmentation, the decoded-image cache.

Training, evaluation, the LR finder and export verification all read images through here, so a
model sees exactly the pixels it was trained on: EXIF rotation, transparency on a fixed
background and 16-bit scaling happen in :func:`load_image`, and the eval transform follows the
backbone's :class:`Preprocessing` exactly. :func:`transform_parts` splits the transforms where a
cache can store decoded images, so cached and uncached runs give bit-identical eval tensors.
Which files to load comes from a scan in :mod:`studio.engine.data`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from studio.engine.errors import DatasetError, explain_os_error

if TYPE_CHECKING:
    # Annotations only: at run time this module needs nothing from the scanner (samples are
    # duck-typed path/label records), which keeps data.py's temporary re-export from cycling.
    from studio.engine.data import ProgressCallback, Sample

BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
MAX_ASPECT = 4.0  # more elongated images are padded to this aspect before resizing
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# Loading


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open any image as 8-bit RGB: EXIF-rotated, transparency on a fixed background,
    CMYK/grayscale converted, 16-bit and float images scaled (not clipped) to 8 bits."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def unreadable(path: str | os.PathLike[str], error: Exception) -> str:
    """Why an image that the scan accepted cannot be read now, and what to do."""
    number = error.errno if isinstance(error, OSError) else None
    if number == errno.ENOENT:
        return (f"{path} could not be read: it was moved or deleted after the dataset was "
                f"scanned; put it back or scan the folder again")
    if number in (errno.EACCES, errno.EPERM):
        return (f"{path} could not be read: permission was denied; give your user read "
                f"permission (chmod a+r) or move the file out of the dataset, then scan again")
    if isinstance(error, OSError) and number is not None:
        reason, remedy = explain_os_error(error)
        return f"{path} could not be read: {reason}; {remedy}, then scan the folder again"
    return (f"{path} could not be read ({error}); it changed after the dataset was scanned, "
            f"so scan the folder again")


def to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _scale_to_8bit(image).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("LA", "La", "RGBa"):
        image = image.convert("RGBA")
    elif mode in ("L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    array = np.asarray(image)
    if image.mode == "F":
        array = np.nan_to_num(array.astype(np.float64))
        low, high = float(array.min()), float(array.max())
        if 0.0 <= low and high <= 1.0:
            scaled = array * 255.0
        else:
            scaled = (array - low) / max(high - low, 1e-12) * 255.0
    else:
        array = array.astype(np.float64)
        # 16-bit data (the usual case) maps 65535 -> 255; wider integers by their own range
        top = 65535.0 if array.max(initial=0) <= 65535 and array.min(initial=0) >= 0 else None
        if top is None:
            low, high = float(array.min()), float(array.max())
            scaled = (array - low) / max(high - low, 1e-12) * 255.0
        else:
            scaled = array / 257.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


class PadToAspect(torch.nn.Module):
    """Pad very elongated images (with the background colour) so resizing stays bounded."""

    def __init__(self, max_aspect: float = MAX_ASPECT) -> None:
        super().__init__()
        self.max_aspect = max_aspect

    def forward(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if max(width, height) <= self.max_aspect * min(width, height):
            return image
        if width > height:
            size = (width, int(np.ceil(width / self.max_aspect)))
        else:
            size = (int(np.ceil(height / self.max_aspect)), height)
        canvas = Image.new("RGB", size, BACKGROUND)
        canvas.paste(image, ((size[0] - width) // 2, (size[1] - height) // 2))
        return canvas


# ---------------------------------------------------------------------------------------------
# Preprocessing and augmentation


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """What the model expects: resize the short side, centre-crop, normalise (RGB, NCHW)."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def at_size(self, crop: int) -> Preprocessing:
        """The same recipe at another crop size, keeping the resize/crop ratio."""
        resize = max(crop, round(crop * self.resize / self.crop))
        return Preprocessing(resize, crop, self.mean, self.std, self.interpolation)

    def to_json(self) -> dict[str, Any]:
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation,
                "channel_order": "RGB", "layout": "NCHW"}


def preprocessing_from_weights(weights: Any | None) -> Preprocessing:
    """Read resize/crop/mean/std from a torchvision weights enum; ImageNet defaults otherwise."""
    if weights is None:
        return Preprocessing()
    try:
        preset = weights.transforms()
        crop = int(_first(preset.crop_size))
        resize = int(_first(preset.resize_size))
        mean = tuple(float(v) for v in preset.mean)
        std = tuple(float(v) for v in preset.std)
        interpolation = str(getattr(preset.interpolation, "value", "bilinear"))
    except (AttributeError, TypeError, ValueError):
        return Preprocessing()
    return Preprocessing(resize, crop, mean, std, interpolation)  # type: ignore[arg-type]


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list | tuple) else value


def build_transforms(prep: Preprocessing, augment: str = "none", train: bool = False) -> Any:
    """Eval transforms follow ``prep`` exactly; train transforms add the augmentation preset."""
    from torchvision.transforms import v2 as T

    decode, tail = transform_parts(prep, augment, train)
    return T.Compose([*decode, T.ToImage(), *tail])


def transform_parts(prep: Preprocessing, augment: str = "none", train: bool = False
                    ) -> tuple[list[Any], list[Any]]:
    """The transforms split where a decoded-image cache can store the result: (steps on the PIL
    image, done once when cached; steps on the uint8 CHW tensor, done every time). Eval: pad,
    resize, centre-crop | scale, normalise (bit-identical either way). Train with augmentation:
    pad | random crop and the preset's steps (cached images are first resized to ``resize``, so
    random crops start from that resolution instead of the original file's)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T

    interpolation = InterpolationMode(prep.interpolation)
    finish = [T.ToDtype(torch.float32, scale=True),
              T.Normalize(mean=list(prep.mean), std=list(prep.std))]
    if not train or augment == "none":
        return ([PadToAspect(), T.Resize(prep.resize, interpolation=interpolation,
                                         antialias=True), T.CenterCrop(prep.crop)], finish)
    crop = prep.crop
    if augment == "light":
        steps = [T.RandomResizedCrop(crop, scale=(0.7, 1.0), interpolation=interpolation,
                                     antialias=True),
                 T.RandomHorizontalFlip()]
        tail: list[Any] = []
    elif augment == "standard":
        steps = [T.RandomResizedCrop(crop, scale=(0.35, 1.0), interpolation=interpolation,
                                     antialias=True),
                 T.RandomHorizontalFlip(),
                 T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)]
        tail = []
    elif augment == "strong":
        steps = [T.RandomResizedCrop(crop, scale=(0.08, 1.0), interpolation=interpolation,
                                     antialias=True),
                 T.RandomHorizontalFlip(),
                 T.TrivialAugmentWide(interpolation=interpolation)]
        tail = [T.RandomErasing(p=0.25)]
    else:
        raise ValueError(f"unknown augmentation preset {augment!r}")
    return [PadToAspect()], [*steps, *finish, *tail]


class FolderDataset(Dataset):
    """Samples from a scan, loaded with :func:`load_image` and transformed."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], Any]) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        sample = self.samples[index]
        try:
            image = load_image(sample.path)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DatasetError(unreadable(sample.path, error)) from error
        return self.transform(image), sample.label


# ---------------------------------------------------------------------------------------------
# Decoded-image cache


IMAGE_CACHE_FRACTION = 0.25  # of the machine's RAM that decoded images may take


class DecodedImages:
    """Images decoded once and kept as uint8 CHW tensors packed in one flat buffer (one shared
    memory segment when DataLoader workers receive it)."""

    def __init__(self, buffer: torch.Tensor, offsets: list[int],
                 shapes: list[tuple[int, int, int]]) -> None:
        self.buffer, self.offsets, self.shapes = buffer, offsets, shapes

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> torch.Tensor:
        start = self.offsets[index]
        c, h, w = self.shapes[index]
        return self.buffer[start:start + c * h * w].view(c, h, w)

    @property
    def nbytes(self) -> int:
        return int(self.buffer.numel())


def decoded_size_estimate(count: int, prep: Preprocessing, cropped: bool) -> int:
    """Bytes for ``count`` images: exact when centre-cropped, else for 4:3 pictures."""
    if cropped:
        return count * 3 * prep.crop * prep.crop
    return count * 3 * prep.resize * round(prep.resize * 4 / 3)


def physical_memory() -> int:
    """Bytes of RAM (8 GiB assumed where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 8 * 1024**3


def image_cache_budget() -> int:
    return int(IMAGE_CACHE_FRACTION * physical_memory())


def decode_images(samples: Sequence[Sample], steps: Sequence[Callable[[Any], Any]],
                  workers: int | None = None, stop: Any = None,
                  progress: ProgressCallback | None = None) -> DecodedImages | None:
    """Decode every sample and apply ``steps`` (PIL → PIL), in parallel threads. Returns None
    when ``stop`` (a threading.Event) is set before the end."""
    from torchvision.transforms.v2 import functional as TF

    def one(sample: Sample) -> torch.Tensor:
        try:
            image = load_image(sample.path)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DatasetError(unreadable(sample.path, error)) from error
        for step in steps:
            image = step(image)
        return TF.pil_to_tensor(image).contiguous()

    tensors: list[torch.Tensor] = []
    workers = workers or min(8, (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="studio-decode") as pool:
        chunk = 64
        for start in range(0, len(samples), chunk):
            if stop is not None and stop.is_set():
                return None
            tensors.extend(pool.map(one, samples[start:start + chunk]))
            if progress:
                progress(len(tensors), len(samples))
    shapes = [(t.shape[0], t.shape[1], t.shape[2]) for t in tensors]
    offsets = [0] * len(tensors)
    for i in range(1, len(tensors)):
        offsets[i] = offsets[i - 1] + tensors[i - 1].numel()
    buffer = torch.cat([t.reshape(-1) for t in tensors]) if tensors else \
        torch.empty(0, dtype=torch.uint8)
    return DecodedImages(buffer, offsets, shapes)


class DecodedDataset(Dataset):
    """Like FolderDataset, from decoded images: only the per-sample tensor steps run."""

    def __init__(self, images: DecodedImages, samples: Sequence[Sample],
                 transform: Callable[[torch.Tensor], Any]) -> None:
        self.images, self.samples, self.transform = images, list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(self.images[index]), self.samples[index].label
