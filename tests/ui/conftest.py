"""Qt tests run offscreen (tests/conftest.py sets QT_QPA_PLATFORM); GC stays on the GUI thread."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from PySide6.QtCore import QThreadPool

from studio.engine.backbones import ModelDescription, describe_model
from studio.engine.config import ModelConfig
from studio.ui.project import ProjectModel


@pytest.fixture(scope="session")
def older_objects_frozen() -> Iterator[None]:
    """What exists before the first Qt test (torch, torchvision, Qt, every module imported and
    whatever earlier tests keep) moves to the collector's permanent generation: a full
    collection of those ~400,000 objects takes ~1 s on 2 cores, and the tests below collect
    after every test. A frozen object is never traversed, in any thread."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def collect_on_gui_thread(older_objects_frozen: None) -> Iterator[None]:
    """Python's cyclic GC runs in whichever thread crosses its threshold; in a worker thread it
    can traverse Qt wrappers while the GUI thread deletes widgets, and crash. The app collects
    on a GUI timer (studio.ui.app); the tests collect between tests, on the GUI thread."""
    enabled = gc.isenabled()
    gc.disable()
    yield
    # Pool jobs (thumbnails of a scan a test did not wait for) must not run on into the next
    # test with the collector on: it could start in their thread.
    QThreadPool.globalInstance().waitForDone(30_000)
    gc.collect()
    if enabled:
        gc.enable()


@pytest.fixture(scope="session")
def resnet18() -> ModelDescription:
    """resnet18's structure for 3 classes (meta device: instant, no memory)."""
    return describe_model(ModelConfig(backbone="resnet18"), num_classes=3)


@pytest.fixture()
def described_project(resnet18: ModelDescription) -> ProjectModel:
    """A project whose model is resnet18: what the layer and LR panels edit."""
    project = ProjectModel()
    project.set_description(resnet18)
    return project
