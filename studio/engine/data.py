"""Folder datasets: scan, verify, split, load robustly, transform.

Two layouts are understood:

* ``DIR/<class>/*`` — split into train/val by a seeded, stratified ``val_fraction``;
* ``DIR/train/<class>/*`` + ``DIR/val/<class>/*`` (+ optional ``DIR/test/<class>/*``).

Every image is decoded once during the scan (in parallel); files that cannot be decoded are
reported with a reason and left out, so they never reach — or crash — a training run.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, WeightedRandomSampler

from studio.engine.errors import DatasetError

ProgressCallback = Callable[[int, int], None]  # (done, total)

SPLIT_NAMES = ("train", "val", "test")
VAL_ALIASES = ("val", "valid", "validation")
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
MAX_ASPECT = 4.0  # more elongated images are padded to this aspect before resizing
IMBALANCE_RATIO = 3.0  # largest/smallest class count that earns a warning
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_extensions() -> frozenset[str]:
    """Extensions of the formats this Pillow build can open (not the save-only ones)."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


@dataclass(frozen=True, slots=True)
class BadFile:
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Sample:
    path: str
    label: int


@dataclass(frozen=True)
class DatasetScan:
    """What is in a dataset folder, after verification."""

    root: str
    layout: str  # "flat" (class folders, split here) or "split" (train/val[/test] folders)
    classes: tuple[str, ...]
    splits: dict[str, tuple[Sample, ...]]  # "train", "val" and maybe "test"
    bad_files: tuple[BadFile, ...] = ()
    warnings: tuple[str, ...] = ()
    ignored_files: int = 0  # not images by extension, or hidden

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class for each split, classes in label order."""
        out: dict[str, dict[str, int]] = {}
        for split, samples in self.splits.items():
            per_class = dict.fromkeys(self.classes, 0)
            for sample in samples:
                per_class[self.classes[sample.label]] += 1
            out[split] = per_class
        return out

    def class_weights(self) -> torch.Tensor:
        """Inverse-frequency weights over the training split, mean 1, for a weighted loss."""
        counts = torch.tensor(list(self.counts()["train"].values()), dtype=torch.float64)
        weights = counts.sum() / (len(counts) * counts.clamp(min=1))
        return (weights / weights.mean()).float()

    def weighted_sampler(self, generator: torch.Generator | None = None) -> WeightedRandomSampler:
        """A sampler that draws every class equally often from the training split."""
        counts = list(self.counts()["train"].values())
        per_sample = [1.0 / counts[s.label] for s in self.splits["train"]]
        return WeightedRandomSampler(per_sample, num_samples=len(per_sample), replacement=True,
                                     generator=generator)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "classes": list(self.classes),
            "splits": self.counts(),
            "bad_files": [{"path": b.path, "reason": b.reason} for b in self.bad_files],
            "warnings": list(self.warnings),
            "ignored_files": self.ignored_files,
        }


# ---------------------------------------------------------------------------------------------
# Scanning


def _visible(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".")


def _subdirs(path: Path) -> list[Path]:
    with os.scandir(path) as entries:
        return sorted(Path(e.path) for e in entries if _visible(e) and e.is_dir())


def _folder_key(path: str | Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _list_images(folder: Path, extensions: frozenset[str], visited: set[tuple[int, int]],
                 reserved: set[tuple[int, int]]) -> tuple[list[Path], int]:
    """Image files under ``folder`` (recursively, hidden entries skipped) and the ignored count.

    Symlinked folders are followed once: ``visited`` holds (device, inode) of every folder
    already walked in this scan and ``reserved`` the dataset's own root, split and class
    folders, so a link loop can neither repeat images nor give them another class.
    """
    found: list[Path] = []
    ignored = 0
    top = _folder_key(folder)
    for current, dirs, files in os.walk(folder, followlinks=True):
        key = _folder_key(current)
        if key in visited or (key in reserved and key != top):
            dirs[:] = []
            continue
        visited.add(key)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() not in extensions:
                ignored += 1
                continue
            found.append(Path(current) / name)
    return found, ignored


def _loose_images(folder: Path, extensions: frozenset[str]) -> int:
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if _visible(e) and e.is_file()
                   and Path(e.name).suffix.lower() in extensions)


def verify_image(path: str | os.PathLike[str]) -> str | None:
    """Decode the whole image; return why it is unusable, or None if it is fine.

    Safe to call from many threads: the pixel limit is checked here rather than through
    Pillow's warning, whose filters are process-wide.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as image:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and image.width * image.height > limit:
                return (f"too many pixels (decompression bomb guard): {image.width}×"
                        f"{image.height} is over Pillow's limit of {limit} pixels")
            image.draft("RGB", (512, 512))  # JPEG: decode at reduced scale, still whole file
            image.load()
    except Image.DecompressionBombError as error:
        return f"too many pixels (decompression bomb guard): {error}"
    except UnidentifiedImageError:
        return "not an image Pillow can read"
    except OSError as error:
        return f"truncated or corrupt image: {error}"
    except (ValueError, SyntaxError, MemoryError, EOFError) as error:
        return f"cannot be decoded: {error}"
    return None


def scan_folder(
    root: str | os.PathLike[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
) -> DatasetScan:
    """Find classes and images, verify every image in parallel, and split.

    Raises DatasetError (one sentence naming the folder) when the folder cannot be used.
    """
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise DatasetError(f"dataset folder {root_path} does not exist; choose a folder that "
                           f"holds one subfolder per class")
    if not root_path.is_dir():
        raise DatasetError(f"{root_path} is a file, not a folder; choose the folder that holds "
                           f"one subfolder per class")
    extensions = image_extensions()
    top = _subdirs(root_path)
    top_names = {p.name.lower(): p for p in top}
    notes: list[str] = []

    split_dirs: dict[str, Path] = {}
    if "train" in top_names:
        split_dirs["train"] = top_names["train"]
        for alias in VAL_ALIASES:
            if alias in top_names:
                split_dirs["val"] = top_names[alias]
                break
        if "test" in top_names:
            split_dirs["test"] = top_names["test"]
        layout = "split"
    else:
        layout = "flat"

    # candidates: split -> class name -> files
    candidates: dict[str, dict[str, list[Path]]] = {}
    ignored = 0
    visited: set[tuple[int, int]] = set()
    class_dirs = top if layout == "flat" else [c for d in split_dirs.values() for c in _subdirs(d)]
    reserved = {_folder_key(p) for p in [root_path, *split_dirs.values(), *class_dirs]}
    for folder in [root_path, *split_dirs.values()]:
        loose = _loose_images(folder, extensions)
        if loose:
            notes.append(f"{loose} image(s) directly in {folder} are outside any class folder "
                         f"and are ignored")
            ignored += loose
    if layout == "flat":
        candidates["all"] = {}
        for class_dir in top:
            files, skipped = _list_images(class_dir, extensions, visited, reserved)
            candidates["all"][class_dir.name] = files
            ignored += skipped
    else:
        for split, split_dir in split_dirs.items():
            candidates[split] = {}
            for class_dir in _subdirs(split_dir):
                files, skipped = _list_images(class_dir, extensions, visited, reserved)
                candidates[split][class_dir.name] = files
                ignored += skipped

    everything = [f for per_class in candidates.values() for files in per_class.values()
                  for f in files]
    reasons = _verify_all(everything, progress, workers)
    bad = tuple(BadFile(str(p), reasons[p]) for p in everything if reasons[p] is not None)
    good: dict[str, dict[str, list[Path]]] = {
        split: {name: [f for f in files if reasons[f] is None] for name, files in per_class.items()}
        for split, per_class in candidates.items()
    }

    define = good["all"] if layout == "flat" else good["train"]
    for name, files in sorted(define.items()):
        if not files:
            where = "" if layout == "flat" else " in train/"
            notes.append(f"folder '{name}'{where} has no usable images, so it is not a class")
    classes = tuple(sorted(name for name, files in define.items() if files))
    if not classes:
        raise DatasetError(f"no classes found in {root_path}: put the images of each class in "
                           f"their own subfolder (for example {root_path}/cats/*.jpg)")
    if len(classes) < 2:
        raise DatasetError(f"only one class ('{classes[0]}') found in {root_path}; a classifier "
                           f"needs at least two class folders")
    label = {name: i for i, name in enumerate(classes)}

    splits: dict[str, tuple[Sample, ...]] = {}
    if layout == "flat":
        train, val = _stratified_split(good["all"], label, val_fraction, seed)
        splits["train"], splits["val"] = train, val
        if val_fraction > 0 and not val:
            notes.append("too few images to hold any back for validation")
    else:
        for split, per_class in good.items():
            samples = []
            for name, files in per_class.items():
                if name not in label:
                    if split != "train" and files:
                        notes.append(f"{split}/{name} is not a class in train/; "
                                     f"its {len(files)} images are left out")
                    continue
                samples.extend(Sample(str(f), label[name]) for f in files)
            splits[split] = tuple(sorted(samples, key=lambda s: (s.label, s.path)))
        if "val" not in splits:
            train, val = _stratified_split(good["train"], label, val_fraction, seed)
            splits["train"], splits["val"] = train, val
            notes.append(f"no val/ folder: {len(val)} training images are held back for "
                         f"validation (val_fraction {val_fraction})")
        for split in ("val", "test"):
            if split in splits:
                missing = [c for c in classes if all(s.label != label[c] for s in splits[split])]
                if missing:
                    notes.append(f"{split}/ has no images of {', '.join(missing)}")

    scan = DatasetScan(str(root_path), layout, classes, splits, bad, (), ignored)
    notes.extend(imbalance_warnings(scan.counts()["train"]))
    if bad:
        notes.append(f"{len(bad)} file(s) cannot be decoded and are left out")
    return DatasetScan(str(root_path), layout, classes, splits, bad, tuple(notes), ignored)


def _verify_all(paths: Sequence[Path], progress: ProgressCallback | None,
                workers: int | None) -> dict[Path, str | None]:
    total = len(paths)
    if progress:
        progress(0, total)
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    results: dict[Path, str | None] = {}
    # Pillow releases the GIL while decoding, so threads give real parallelism here. The pixel
    # limit is checked by verify_image itself; the filter is changed here, on one thread only.
    with warnings.catch_warnings(), ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="studio-verify") as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for done, (path, reason) in enumerate(
                zip(paths, pool.map(verify_image, paths), strict=True), start=1):
            results[path] = reason
            if progress and (done == total or done % 16 == 0):
                progress(done, total)
    return results


def _stratified_split(per_class: dict[str, list[Path]], label: dict[str, int],
                      val_fraction: float, seed: int) -> tuple[tuple[Sample, ...], ...]:
    """Per class, a seeded shuffle; round(n·f) images to val, keeping at least one in train."""
    train: list[Sample] = []
    val: list[Sample] = []
    for name in sorted(label):
        files = sorted(per_class.get(name, []))
        rng = random.Random(f"{seed}:{name}")  # per class: adding a class moves no other split
        rng.shuffle(files)
        n_val = round(len(files) * val_fraction) if val_fraction > 0 else 0
        if val_fraction > 0 and len(files) >= 2:
            n_val = max(1, n_val)
        n_val = min(n_val, len(files) - 1)
        val.extend(Sample(str(f), label[name]) for f in files[:n_val])
        train.extend(Sample(str(f), label[name]) for f in files[n_val:])
    order = lambda s: (s.label, s.path)  # noqa: E731
    return tuple(sorted(train, key=order)), tuple(sorted(val, key=order))


def imbalance_warnings(counts: dict[str, int], ratio: float = IMBALANCE_RATIO) -> list[str]:
    if not counts:
        return []
    most = max(counts, key=lambda c: counts[c])
    least = min(counts, key=lambda c: counts[c])
    if counts[least] == 0 or counts[most] / counts[least] < ratio:
        return []
    return [f"classes are imbalanced: '{most}' has {counts[most]} training images, '{least}' "
            f"has {counts[least]} ({counts[most] / counts[least]:.1f}×); consider the "
            f"class-weighted loss or the weighted sampler"]


# ---------------------------------------------------------------------------------------------
# Loading


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open any image as 8-bit RGB: EXIF-rotated, transparency on a fixed background,
    CMYK/grayscale converted, 16-bit and float images scaled (not clipped) to 8 bits."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


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
            raise DatasetError(f"{sample.path} could not be read ({error}); it changed after the "
                               f"dataset was scanned, so scan the folder again") from error
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
            raise DatasetError(f"{sample.path} could not be read ({error}); it changed after "
                               f"the dataset was scanned, so scan the folder again") from error
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
