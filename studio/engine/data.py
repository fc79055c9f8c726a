"""Folder datasets: find the classes and images in a folder, verify them, split them.

Two layouts are understood:

* ``DIR/<class>/*`` — split into train/val by a seeded, stratified ``val_fraction``;
* ``DIR/train/<class>/*`` + ``DIR/val/<class>/*`` (+ optional ``DIR/test/<class>/*``).

Every image is decoded once during the scan (in parallel); files that cannot be decoded are
reported with a reason and left out, so they never reach — or crash — a training run. A scan
yields plain data (paths and labels, checked once); turning those files into tensors is the
job of :mod:`studio.engine.images`.
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

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import WeightedRandomSampler

from studio.engine.errors import DatasetError

ProgressCallback = Callable[[int, int], None]  # (done, total)

SPLIT_NAMES = ("train", "val", "test")
VAL_ALIASES = ("val", "valid", "validation")
IMBALANCE_RATIO = 3.0  # largest/smallest class count that earns a warning


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

    def sample_weights(self) -> list[float]:
        """Per training sample, one over its class's count: drawn by these weights, every
        class comes up equally often."""
        counts = list(self.counts()["train"].values())
        return [1.0 / counts[s.label] for s in self.splits["train"]]

    def weighted_sampler(self, generator: torch.Generator | None = None) -> WeightedRandomSampler:
        """A sampler that draws every class equally often from the training split."""
        weights = self.sample_weights()
        return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True,
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

