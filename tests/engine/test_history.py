"""The run history's listing facts that the CLI tests do not reach."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from studio.engine.history import folder_size


def test_a_hard_linked_checkpoint_counts_once_in_the_folder_size(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "last.pt").write_bytes(b"x" * 1000)
    (tmp_path / "metrics.jsonl").write_bytes(b"y" * 10)
    try:
        os.link(checkpoints / "last.pt", checkpoints / "best.pt")  # what the trainer does
    except OSError:
        pytest.skip("no hard links on this file system")
    assert folder_size(tmp_path) == 1010
