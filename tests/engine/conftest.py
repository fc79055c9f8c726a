"""Engine test fixtures: tiny generated image folders (no Qt, no downloads)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

TINY_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 220)}


def write_tiny_dataset(root: Path, per_class: int = 10, size: int = 16) -> Path:
    """One folder per class of ``per_class`` noisy solid-colour ``size``-pixel PNGs."""
    rng = random.Random(0)
    for name, colour in TINY_COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.new("RGB", (size, size), colour)
            pixels = image.load()
            for _ in range(size * 2):
                x, y = rng.randrange(size), rng.randrange(size)
                pixels[x, y] = tuple(min(255, max(0, c + rng.randint(-60, 60))) for c in colour)
            image.save(folder / f"{name}_{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 10 images of 16×16 pixels, shared read-only by every test of a session."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="session")
def make_tiny_dataset() -> Callable[..., Path]:
    """The writer itself, for tests that need their own copy to change."""
    return write_tiny_dataset
