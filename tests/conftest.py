"""Shared test setup: Qt offscreen before anything imports it; tiny generated image folders and
one tiny trained run that engine, CLI and UI tests read (never change: copy it first)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if "STUDIO_RUNS_DIR" not in os.environ:  # a run without --out must not land in the user's home
    import tempfile

    os.environ["STUDIO_RUNS_DIR"] = tempfile.mkdtemp(prefix="studio-test-runs-")
if "STUDIO_LOG_FILE" not in os.environ:  # …nor a test's traceback in the user's log
    import tempfile

    os.environ["STUDIO_LOG_FILE"] = os.path.join(tempfile.mkdtemp(prefix="studio-test-log-"),
                                                 "studio.log")

import random  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run: resnet18 at 32 px, 3 epochs on 3 colours × 10 images (3 per class held
    back for validation). Read-only; copy it before changing anything."""
    import torch

    from studio.engine.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
    from studio.engine.events import Outcome
    from studio.engine.trainer import Trainer

    root = tmp_path_factory.mktemp("trained")
    data = write_tiny_dataset(root / "data", per_class=10, size=16)
    config = RunConfig(
        data=DataConfig(root=str(data), image_size=32, augment="none", val_fraction=0.3),
        model=ModelConfig(backbone="resnet18", weights="none"),
        optim=OptimConfig(lr=1e-3, schedule="none"),
        train=TrainConfig(epochs=3, batch_size=4, workers=0, precision="fp32", device="cpu",
                          seed=0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from two busy cores
    try:
        result = Trainer(config, root / "run").fit()
    finally:
        torch.set_num_threads(threads)
    assert result.outcome is Outcome.COMPLETED, result.message
    return root / "run"
