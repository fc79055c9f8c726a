"""A small dataset with planted problems, shared by the doctor and cleaner tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def smooth_image(seed: int, size: int = 64) -> Image.Image:
    """A random smooth picture (an 8×8 colour grid blown up bicubically): 14 or more pHash bits
    from every other seed (400 seeds measured), 0 to 2 from its resized JPEG copies."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)


def write_planted(root: Path) -> Path:
    """train/{a,b,c} and val/{a,b,c}, 4 distinct images each, plus: an exact duplicate in
    train/a, a near-duplicate (resized JPEG) in train/b, a leak (train/a = val/a), a conflict
    (train/a = train/b), a tiny and an elongated image in train/c."""
    seed = 0
    for split in ("train", "val"):
        for name in ("a", "b", "c"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                seed += 1
                smooth_image(seed).save(folder / f"{name}{i}.png")
    shutil.copyfile(root / "train/a/a0.png", root / "train/a/a0 copy.png")  # duplicate
    smooth_image(1000).save(root / "train/b/near.png")
    smooth_image(1000).resize((48, 48)).save(root / "train/b/near_small.jpg", quality=90)
    smooth_image(2000).save(root / "train/a/leak.png")
    shutil.copyfile(root / "train/a/leak.png", root / "val/a/leak.png")  # leak
    smooth_image(3000).save(root / "train/a/both.png")
    shutil.copyfile(root / "train/a/both.png", root / "train/b/both.png")  # conflict
    smooth_image(4000, size=12).save(root / "train/c/tiny.png")
    smooth_image(5000).resize((300, 40)).save(root / "train/c/long.png")
    return root
