"""`studio --self-test`: what a freshly installed or built app runs to prove it works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.ui import self_test

ROOT = Path(__file__).resolve().parents[1]


def test_self_test_opens_the_window_and_runs_every_part() -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run([sys.executable, "-m", "studio", "--self-test"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["ok", "torch"], ["ok", "torchvision"], ["ok", "onnxruntime"], ["ok", "qt"]]
    assert "mobilenet_v3_small built for 3 classes" in lines[1]
    assert "the main window opened" in lines[3] and "icon in 7 sizes" in lines[3]
    assert lines[-1].startswith("self-test passed: 4 checks in ")


def test_a_failing_part_is_named_and_the_rest_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> str:
        raise ImportError("libonnxruntime.so: cannot open shared object file")

    monkeypatch.setattr(self_test, "CHECKS", (("onnxruntime", broken), ("torch", lambda: "2.x")))
    lines: list[str] = []
    assert self_test.run_self_test(lines.append) == 1
    assert lines[0] == ("FAILED  onnxruntime  ImportError: libonnxruntime.so: cannot open shared "
                        "object file")
    assert lines[1].startswith("ok      torch        2.x (")
    assert lines[2].startswith("self-test failed: onnxruntime did not work in ")
    assert lines[2].endswith("run `studio --check` for missing libraries, "
                             "`studio -v --self-test` for details.")
