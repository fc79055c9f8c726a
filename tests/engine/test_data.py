"""Behaviour of studio.engine.data and .images as a user meets it: scanning odd folders, loading
odd images.

Every dataset is a handful of tiny images written into tmp_path, so the file runs in seconds.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

from studio.engine.data import DatasetScan, scan_folder
from studio.engine.errors import DatasetError
from studio.engine.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FolderDataset,
    Preprocessing,
    build_transforms,
    load_image,
    preprocessing_from_weights,
)

WHITE = (255, 255, 255)
SIZE = 32  # crop size for transform tests: small enough to be fast

# ---------------------------------------------------------------------------------------------
# Helpers that write tiny images


def write_image(path: Path, size: tuple[int, int] = (8, 8), mode: str = "RGB",
                color: object = None, **save: object) -> Path:
    """A solid image of ``mode`` at ``path`` (format from the suffix); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is None:
        color = {"RGB": (90, 140, 200), "L": 120, "1": 1}.get(mode, 0)
    Image.new(mode, size, color).save(path, **save)
    return path


def write_pixels(path: Path, mode: str, pixels: list[object], **save: object) -> Path:
    """A one-row image whose pixels are given left to right (lossless formats only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new(mode, (len(pixels), 1))
    image.putdata(pixels)
    image.save(path, **save)
    return path


def write_class(root: Path, name: str, count: int, ext: str = ".png",
                size: tuple[int, int] = (8, 8)) -> list[Path]:
    """``count`` distinct small images in ``root/name``."""
    return [write_image(root / name / f"{name}_{i:03d}{ext}", size, color=(i * 7 % 256, 60, 90))
            for i in range(count)]


def write_truncated(path: Path) -> Path:
    """A valid, noisy 30x30 image cut in half, as an interrupted download leaves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def all_samples(scan: DatasetScan) -> list[str]:
    return [s.path for samples in scan.splits.values() for s in samples]


def split_paths(scan: DatasetScan, split: str) -> set[str]:
    return {s.path for s in scan.splits[split]}


# ---------------------------------------------------------------------------------------------
# 1. Bad, hidden and odd files


class Messy(NamedTuple):
    root: Path
    good: list[Path]
    bad: dict[str, Path]  # kind of damage -> file
    ignored: list[Path]  # counted in ignored_files
    hidden: list[Path]  # in hidden folders: not even counted


@pytest.fixture
def messy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Messy:
    """A flat dataset holding every kind of bad and odd file next to good ones."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 8x8 images are fine, 40x40 are not
    root = tmp_path / "messy"
    good = [*write_class(root, "cats", 6), *write_class(root, "café", 3, ext=".jpg"),
            *write_class(root, "猫", 4)]
    good.append(write_image(root / "café" / "IMG_0001.JPG"))  # upper-case extension
    good.append(write_image(root / "cats" / "nested" / "deeper.png"))  # subfolders are walked
    bad = {
        "empty": write_bytes(root / "cats" / "zero.jpg", b""),
        "text": write_bytes(root / "cats" / "not_an_image.png", b"not an image\n" * 20),
        "truncated png": write_truncated(root / "cats" / "half.png"),
        "truncated jpeg": write_truncated(root / "猫" / "half.jpg"),
        "bomb under 2x": write_image(root / "cats" / "bomb_1600px.png", (40, 40)),
        "bomb over 2x": write_image(root / "cats" / "bomb_2500px.png", (50, 50)),
        "broken class empty": write_bytes(root / "broken" / "zero.png", b""),
        "broken class text": write_bytes(root / "broken" / "text.jpg", b"hello"),
    }
    ignored = [
        write_bytes(root / "cats" / ".DS_Store", b"\x00\x00\x00\x01Bud1"),
        write_image(root / "cats" / ".hidden.png"),
        write_bytes(root / "cats" / "notes.txt", b"shot on a phone"),
    ]
    hidden_folders = [  # neither classes, nor bad files, nor samples
        *write_class(root / ".thumbs", "small", 3),
        write_image(root / "cats" / ".thumbs" / "cat_thumb.png"),
        write_bytes(root / "cats" / ".thumbs" / "broken.png", b""),
    ]
    return Messy(root, good, bad, ignored, hidden_folders)


def test_scan_reports_every_bad_file_with_a_reason_and_keeps_the_good(messy: Messy) -> None:
    # One worker keeps this inventory deterministic; test_bombs_are_caught_in_parallel covers
    # the pixel-limit check under concurrent verification.
    scan = scan_folder(messy.root, val_fraction=0.25, seed=0, workers=1)

    assert scan.layout == "flat"
    assert scan.classes == ("café", "cats", "猫")
    assert list(scan.classes) == sorted(scan.classes)

    bad = messy.bad
    reasons = {b.path: b.reason for b in scan.bad_files}
    assert set(reasons) == {str(p) for p in bad.values()}
    expected_words = {
        "empty": ("empty", "0 bytes"),
        "text": ("not an image",),
        "truncated png": ("truncated", "corrupt"),
        "truncated jpeg": ("truncated", "corrupt"),
        "bomb under 2x": ("decompression bomb", "too many pixels"),
        "bomb over 2x": ("decompression bomb", "too many pixels"),
        "broken class empty": ("empty", "0 bytes"),
        "broken class text": ("not an image",),
    }
    for kind, words in expected_words.items():
        reason = reasons[str(bad[kind])].lower()
        assert any(word in reason for word in words), f"{kind}: {reason!r}"

    # Exactly the good files are samples, each once; nothing bad, hidden or ignored slipped in.
    samples = all_samples(scan)
    assert sorted(samples) == sorted(str(p) for p in messy.good)
    assert len(samples) == len(set(samples))

    assert scan.ignored_files == len(messy.ignored)
    assert not any(".thumbs" in p for p in [*samples, *reasons])
    assert {str(p) for p in messy.hidden}.isdisjoint([*samples, *reasons])

    assert any("'broken'" in w and "not a class" in w for w in scan.warnings), scan.warnings
    assert any(f"{len(bad)} file(s)" in w for w in scan.warnings), scan.warnings


def test_bombs_are_caught_in_parallel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many workers verifying at once must each still refuse an image over the pixel limit,
    and the scan must leave the process's warning filters as it found them."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    root = tmp_path / "bombs"
    bombs = [p for name in ("a", "b") for p in write_class(root, name, 60, size=(40, 40))]
    for name in ("a", "b"):
        write_class(root, f"{name}_ok", 2)
    filters_before = list(warnings.filters)
    for _ in range(20):  # the threads must interleave in many ways; a clean run takes ~0.5 s
        scan = scan_folder(root, workers=8)
        slipped = set(all_samples(scan)) & {str(p) for p in bombs}
        assert not slipped, f"{len(slipped)} over-limit images were accepted as good"
    assert warnings.filters == filters_before


def test_symlink_loop_does_not_duplicate_images(tmp_path: Path) -> None:
    """A link back up the tree (easy to make by accident) must not repeat or relabel images."""
    root = tmp_path / "linked"
    cats, dogs = write_class(root, "cats", 3), write_class(root, "dogs", 3)
    try:
        os.symlink("..", root / "cats" / "up")
    except (OSError, NotImplementedError):
        pytest.skip("symlinks are not available here")
    scan = scan_folder(root)
    assert scan.counts()["train"]["cats"] + scan.counts()["val"]["cats"] == len(cats)
    assert scan.counts()["train"]["dogs"] + scan.counts()["val"]["dogs"] == len(dogs)
    assert split_paths(scan, "train").isdisjoint(split_paths(scan, "val"))


# ---------------------------------------------------------------------------------------------
# 2. Odd-but-valid images load as 8-bit RGB


def _two_halves(path: Path, orientation: int) -> Path:
    """20x10 JPEG, left half red and right half blue, tagged with an EXIF orientation."""
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)
    return path


@pytest.mark.parametrize(("orientation", "red_at"), [(6, "top"), (8, "bottom")])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, red_at: str) -> None:
    image = load_image(_two_halves(tmp_path / "phone.jpg", orientation))
    assert image.mode == "RGB"
    assert image.size == (10, 20)
    top, bottom = image.getpixel((5, 2)), image.getpixel((5, 17))
    red, blue = (top, bottom) if red_at == "top" else (bottom, top)
    assert red[0] > 200 and red[2] < 60, red
    assert blue[2] > 200 and blue[0] < 60, blue


TRANSPARENT = {
    # mode: (pixels with the first one transparent, save options, expected second pixel)
    "RGBA": ([(200, 0, 0, 0), (0, 0, 200, 255)], {}, (0, 0, 200)),
    "LA": ([(50, 0), (100, 255)], {}, (100, 100, 100)),
    "L": ([50, 100], {"transparency": 50}, (100, 100, 100)),
    "RGB": ([(0, 0, 0), (10, 200, 10)], {"transparency": (0, 0, 0)}, (10, 200, 10)),  # tRNS
}


@pytest.mark.parametrize("mode", list(TRANSPARENT))
def test_transparent_pixels_are_composited_on_white(tmp_path: Path, mode: str) -> None:
    pixels, save, opaque = TRANSPARENT[mode]
    image = load_image(write_pixels(tmp_path / f"{mode}.png", mode, pixels, **save))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 0)) == opaque


def test_palette_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([200, 0, 0, 0, 200, 0] + [0] * 762)
    image.putdata([0, 1])
    image.save(tmp_path / "palette.png", transparency=0)
    assert Image.open(tmp_path / "palette.png").mode == "P"  # the case under test
    loaded = load_image(tmp_path / "palette.png")
    assert loaded.mode == "RGB"
    assert [loaded.getpixel((0, 0)), loaded.getpixel((1, 0))] == [WHITE, (0, 200, 0)]


def test_cmyk_grayscale_and_bilevel_become_rgb(tmp_path: Path) -> None:
    cmyk = load_image(write_image(tmp_path / "cmyk.jpg", mode="CMYK", color=(0, 255, 255, 0)))
    r, g, b = cmyk.getpixel((4, 4))
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60, (r, g, b)

    gray = load_image(write_pixels(tmp_path / "gray.png", "L", [77, 200]))
    assert gray.mode == "RGB"
    assert [gray.getpixel((0, 0)), gray.getpixel((1, 0))] == [(77, 77, 77), (200, 200, 200)]

    bilevel = load_image(write_pixels(tmp_path / "bilevel.png", "1", [0, 255]))
    assert bilevel.mode == "RGB"
    assert [bilevel.getpixel((0, 0)), bilevel.getpixel((1, 0))] == [(0, 0, 0), WHITE]


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[65535, 32896, 257, 0]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png")
    assert image.mode == "RGB"
    got = [image.getpixel((x, 0)) for x in range(4)]
    assert got == [WHITE, (128, 128, 128), (1, 1, 1), (0, 0, 0)]
    assert got[1] != WHITE  # clipping to 8 bits would saturate every mid-grey


def test_float_image_in_unit_range_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "float.tif")
    image = load_image(tmp_path / "float.tif")
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


ODD_IMAGES: dict[str, Callable[[Path], Path]] = {
    "exif": lambda d: _two_halves(d / "exif.jpg", 6),
    "rgba": lambda d: write_image(d / "rgba.png", mode="RGBA", color=(9, 9, 9, 0)),
    "la": lambda d: write_image(d / "la.png", mode="LA", color=(9, 0)),
    "cmyk": lambda d: write_image(d / "cmyk.jpg", mode="CMYK", color=(0, 0, 0, 255)),
    "gray": lambda d: write_image(d / "gray.png", mode="L"),
    "bilevel": lambda d: write_image(d / "bilevel.png", mode="1"),
    "gray16": lambda d: write_image(d / "gray16.png", mode="I;16", color=40000),
    "tiny": lambda d: write_image(d / "tiny.png", (1, 1)),
    "tall": lambda d: write_image(d / "tall.png", (3, 400)),
    "wide": lambda d: write_image(d / "wide.png", (400, 3)),
}


@pytest.mark.parametrize("kind", list(ODD_IMAGES))
def test_odd_images_become_square_normalised_tensors(tmp_path: Path, kind: str) -> None:
    image = load_image(ODD_IMAGES[kind](tmp_path))
    assert image.mode == "RGB"
    tensor = build_transforms(Preprocessing().at_size(SIZE))(image)
    assert tensor.shape == (3, SIZE, SIZE)
    assert tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all()


# ---------------------------------------------------------------------------------------------
# 3. Layouts and splits


@pytest.fixture
def flat_root(tmp_path: Path) -> Path:
    root = tmp_path / "flat"
    for name, count in {"apple": 10, "banana": 7, "cherry": 13, "date": 2, "elder": 1}.items():
        write_class(root, name, count)
    return root


def test_flat_layout_is_split_stratified_by_fraction(flat_root: Path) -> None:
    scan = scan_folder(flat_root, val_fraction=0.2, seed=3)
    assert scan.layout == "flat"
    assert set(scan.splits) == {"train", "val"}
    counts = scan.counts()
    expected_val = {"apple": 2, "banana": 1, "cherry": 3, "date": 1, "elder": 0}
    assert counts["val"] == expected_val  # round(n * 0.2), at least 1 when a class has 2+
    for name in scan.classes:
        total = len(list((flat_root / name).iterdir()))
        assert counts["train"][name] + counts["val"][name] == total
        assert counts["train"][name] >= 1
    assert split_paths(scan, "train").isdisjoint(split_paths(scan, "val"))
    for sample in scan.splits["val"]:
        assert Path(sample.path).parent.name == scan.classes[sample.label]


def test_flat_split_depends_on_seed_only(flat_root: Path) -> None:
    val = [split_paths(scan_folder(flat_root, seed=seed), "val") for seed in range(5)]
    assert split_paths(scan_folder(flat_root, seed=0), "val") == val[0]
    assert len({frozenset(v) for v in val}) > 1


def test_adding_a_class_leaves_other_classes_split_alone(flat_root: Path) -> None:
    before = split_paths(scan_folder(flat_root, seed=1), "val")
    write_class(flat_root, "fig", 6)
    after = split_paths(scan_folder(flat_root, seed=1), "val")
    assert before < after
    assert {Path(p).parent.name for p in after - before} == {"fig"}


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_split_layout_is_used_as_given(tmp_path: Path, val_name: str) -> None:
    root = tmp_path / "given"
    given = {
        "train": {"ant": 4, "bee": 5},
        val_name: {"ant": 2, "bee": 1, "wasp": 2},  # wasp is not a training class
        "test": {"ant": 1, "bee": 3},
    }
    for split, per_class in given.items():
        for name, count in per_class.items():
            write_class(root / split, name, count)
    scan = scan_folder(root, val_fraction=0.5)
    assert scan.layout == "split"
    assert scan.classes == ("ant", "bee")
    assert scan.counts() == {
        "train": {"ant": 4, "bee": 5},
        "val": {"ant": 2, "bee": 1},
        "test": {"ant": 1, "bee": 3},
    }
    for split, folder in (("train", "train"), ("val", val_name), ("test", "test")):
        assert all(Path(s.path).parts[-3] == folder for s in scan.splits[split])
    assert any("wasp" in w for w in scan.warnings), scan.warnings


def test_split_layout_without_test_has_no_test_split(tmp_path: Path) -> None:
    root = tmp_path / "given"
    for split in ("train", "val"):
        write_class(root / split, "ant", 3)
        write_class(root / split, "bee", 3)
    scan = scan_folder(root)
    assert set(scan.splits) == {"train", "val"}
    assert scan.counts()["val"] == {"ant": 3, "bee": 3}


def test_train_only_layout_holds_back_a_validation_split(tmp_path: Path) -> None:
    root = tmp_path / "train_only"
    write_class(root / "train", "ant", 10)
    write_class(root / "train", "bee", 5)
    scan = scan_folder(root, val_fraction=0.2, seed=0)
    assert scan.layout == "split"
    assert scan.counts() == {"train": {"ant": 8, "bee": 4}, "val": {"ant": 2, "bee": 1}}
    assert split_paths(scan, "train").isdisjoint(split_paths(scan, "val"))
    assert any("val" in w and "held back" in w for w in scan.warnings), scan.warnings


# ---------------------------------------------------------------------------------------------
# 4. Folders that cannot be used


def _no_class_folders(tmp_path: Path) -> Path:
    root = tmp_path / "loose"
    write_image(root / "loose.png")
    return root


def _one_class(tmp_path: Path) -> Path:
    root = tmp_path / "lonely"
    write_class(root, "only", 3)
    return root


def _only_broken_classes(tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    write_bytes(root / "a" / "x.png", b"")
    write_bytes(root / "b" / "y.jpg", b"junk")
    return root


def _empty_folder(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


UNUSABLE: dict[str, Callable[[Path], Path]] = {
    "missing": lambda d: d / "does_not_exist",
    "a file": lambda d: write_image(d / "picture.png"),
    "empty folder": _empty_folder,
    "no class folders": _no_class_folders,
    "one class": _one_class,
    "only broken classes": _only_broken_classes,
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_unusable_folder_raises_a_dataset_error_naming_it(tmp_path: Path, case: str) -> None:
    folder = UNUSABLE[case](tmp_path)
    with pytest.raises(DatasetError) as raised:
        scan_folder(folder)
    assert str(folder) in str(raised.value)


def test_one_class_error_names_the_class(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="only"):
        scan_folder(_one_class(tmp_path))


# ---------------------------------------------------------------------------------------------
# 5. Progress


def test_progress_counts_up_to_the_total(tmp_path: Path) -> None:
    root = tmp_path / "progress"
    write_class(root, "a", 20)
    write_class(root, "b", 19)
    write_bytes(root / "b" / "broken.png", b"")  # bad files are progress too
    calls: list[tuple[int, int]] = []
    scan_folder(root, progress=lambda done, total: calls.append((done, total)))
    total = 40
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    assert {t for _, t in calls} == {total}
    done = [d for d, _ in calls]
    assert done == sorted(done)


# ---------------------------------------------------------------------------------------------
# 6. Imbalance


@pytest.fixture
def imbalanced(tmp_path: Path) -> DatasetScan:
    root = tmp_path / "imbalanced"
    write_class(root, "common", 30)
    write_class(root, "rare", 5)
    return scan_folder(root, val_fraction=0.2, seed=0)


def test_imbalance_is_warned_about_naming_both_classes(imbalanced: DatasetScan) -> None:
    assert any("common" in w and "rare" in w for w in imbalanced.warnings), imbalanced.warnings


def test_balanced_classes_are_not_warned_about(tmp_path: Path) -> None:
    write_class(tmp_path / "balanced", "a", 5)
    write_class(tmp_path / "balanced", "b", 4)
    assert scan_folder(tmp_path / "balanced").warnings == ()


def test_class_weights_favour_the_rare_class(imbalanced: DatasetScan) -> None:
    weights = imbalanced.class_weights()
    common, rare = (imbalanced.classes.index(n) for n in ("common", "rare"))
    assert weights.shape == (2,)
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights[rare] > weights[common]
    train = imbalanced.counts()["train"]  # inverse frequency
    assert (weights[rare] / weights[common]).item() == pytest.approx(
        train["common"] / train["rare"])


def test_weighted_sampler_draws_classes_about_equally(imbalanced: DatasetScan) -> None:
    sampler = imbalanced.weighted_sampler(torch.Generator().manual_seed(0))
    train = imbalanced.splits["train"]
    assert len(sampler) == len(train)
    labels = Counter(train[i].label for _ in range(40) for i in sampler)
    rare = imbalanced.classes.index("rare")
    assert 0.4 < labels[rare] / sum(labels.values()) < 0.6, labels


# ---------------------------------------------------------------------------------------------
# 7. Preprocessing, augmentation, the Dataset


def test_preprocessing_is_read_from_torchvision_weights() -> None:
    from torchvision.models import ResNet18_Weights, Swin_T_Weights

    resnet = preprocessing_from_weights(ResNet18_Weights.DEFAULT)  # metadata only, no download
    assert (resnet.resize, resnet.crop, resnet.interpolation) == (256, 224, "bilinear")
    assert resnet.mean == pytest.approx(IMAGENET_MEAN)
    assert resnet.std == pytest.approx(IMAGENET_STD)

    swin = preprocessing_from_weights(Swin_T_Weights.DEFAULT)
    assert (swin.resize, swin.crop, swin.interpolation) == (232, 224, "bicubic")


@pytest.mark.parametrize("weights", [None, object(), "not weights"])
def test_preprocessing_defaults_without_usable_weights(weights: object) -> None:
    assert preprocessing_from_weights(weights) == Preprocessing()
    assert (Preprocessing().resize, Preprocessing().crop) == (256, 224)


def test_at_size_keeps_the_resize_to_crop_ratio() -> None:
    prep = Preprocessing().at_size(112)
    assert (prep.resize, prep.crop) == (128, 112)
    assert (prep.mean, prep.std) == (IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("augment", ["none", "light", "standard", "strong"])
@pytest.mark.parametrize("size", [(20, 10), (1, 1), (3, 400)])
def test_augmentation_presets_give_square_float_tensors(augment: str,
                                                        size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    transform = build_transforms(Preprocessing().at_size(SIZE), augment=augment, train=True)
    for _ in range(3):
        tensor = transform(Image.new("RGB", size, (30, 120, 220)))
        assert tensor.shape == (3, SIZE, SIZE)
        assert tensor.dtype == torch.float32


def test_unknown_augmentation_preset_is_refused() -> None:
    with pytest.raises(ValueError, match="psychedelic"):
        build_transforms(Preprocessing(), augment="psychedelic", train=True)


def test_eval_transforms_ignore_the_augmentation_preset() -> None:
    image = Image.new("RGB", (40, 30), (30, 120, 220))
    prep = Preprocessing().at_size(SIZE)
    plain = build_transforms(prep)(image)
    assert torch.equal(build_transforms(prep, augment="strong", train=False)(image), plain)


def test_folder_dataset_yields_tensors_and_labels(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_class(root, "ant", 3, size=(12, 9))
    write_class(root, "bee", 3, ext=".jpg", size=(9, 12))
    scan = scan_folder(root, val_fraction=0.0)
    dataset = FolderDataset(scan.splits["train"], build_transforms(Preprocessing().at_size(SIZE)))
    assert len(dataset) == 6
    for index, sample in enumerate(scan.splits["train"]):
        tensor, label = dataset[index]
        assert isinstance(tensor, torch.Tensor)
        assert tensor.shape == (3, SIZE, SIZE)
        assert label == sample.label
        assert scan.classes[label] == Path(sample.path).parent.name


def test_folder_dataset_names_a_file_broken_after_the_scan(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_class(root, "ant", 2)
    write_class(root, "bee", 2)
    scan = scan_folder(root, val_fraction=0.0)
    dataset = FolderDataset(scan.splits["train"], build_transforms(Preprocessing().at_size(SIZE)))
    victim = scan.splits["train"][0].path
    Path(victim).write_bytes(b"")
    with pytest.raises(DatasetError, match="scan the folder again") as raised:
        dataset[0]
    assert victim in str(raised.value)


# ---------------------------------------------------------------------------------------------
# 8. JSON summary


def test_scan_to_json_has_the_documented_shape(messy: Messy) -> None:
    scan = scan_folder(messy.root, workers=1)
    summary = json.loads(json.dumps(scan.to_json(), ensure_ascii=False))
    assert summary["classes"] == ["café", "cats", "猫"]
    assert set(summary["splits"]) == {"train", "val"}
    for per_class in summary["splits"].values():
        assert list(per_class) == summary["classes"]
        assert all(isinstance(n, int) for n in per_class.values())
    assert sum(sum(c.values()) for c in summary["splits"].values()) == len(messy.good)
    assert len(summary["bad_files"]) == len(messy.bad)
    assert all(set(b) == {"path", "reason"} and b["reason"] for b in summary["bad_files"])
    assert summary["warnings"] and all(isinstance(w, str) for w in summary["warnings"])
