"""Qt tests run offscreen (tests/conftest.py sets QT_QPA_PLATFORM); GC stays on the GUI thread."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def collect_on_gui_thread() -> Iterator[None]:
    """Python's cyclic GC runs in whichever thread crosses its threshold; in a worker thread it
    can traverse Qt wrappers while the GUI thread deletes widgets, and crash. The app collects
    on a GUI timer (studio.ui.app); the tests collect between tests, on the GUI thread."""
    enabled = gc.isenabled()
    gc.disable()
    yield
    gc.collect()
    if enabled:
        gc.enable()
