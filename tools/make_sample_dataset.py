"""Write the bundled sample dataset from scikit-learn's handwritten digits.

Run once by a developer (needs scikit-learn); the PNG files it writes are committed and shipped
as package data, so nothing is downloaded or generated at run time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

CLASSES = {digit: str(digit) for digit in range(5)}
PER_CLASS = 60
SIZE = 32
OUT = Path(__file__).resolve().parents[1] / "resources" / "sample_digits"


def main() -> None:
    digits = load_digits()
    for label, name in CLASSES.items():
        folder = OUT / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        indices = np.flatnonzero(digits.target == label)[:PER_CLASS]
        for i in indices:
            pixels = (digits.images[i] / 16.0 * 255.0).round().astype(np.uint8)
            # dark ink on white paper, upscaled so a person can see the digit
            image = Image.fromarray(255 - pixels, mode="L").resize((SIZE, SIZE), Image.BICUBIC)
            image.save(folder / f"digit{name}_{i:04d}.png", optimize=True)
    print(f"wrote {len(CLASSES) * PER_CLASS} images to {OUT}")


if __name__ == "__main__":
    main()
