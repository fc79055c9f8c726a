"""The training benchmark runs end to end (smoke size); the full size is run by hand."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> object:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_train_smoke_run_prints_both_loops_for_every_scenario(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load("bench_train")
    # fp32: on a CPU with bf16, precision auto trains in bf16, which is slow there (a third of
    # this test's time); the bf16 path is gpu_check's row, run below, and the smoke checks
    # that the script runs both loops, not a precision.
    assert bench.main(["--smoke", "--precision", "fp32",  # type: ignore[attr-defined]
                       "--out", str(tmp_path / "work"),
                       "--json", str(tmp_path / "figures.json")]) == 0
    out = capsys.readouterr().out
    for scenario in ("head", "last_block", "full"):
        assert f"{scenario}/reference: fp32" in out and f"{scenario}/studio: " in out
    rows = json.loads((tmp_path / "figures.json").read_text())
    assert [(r["scenario"], r["loop"]) for r in rows] == [
        (s, loop) for s in ("head", "last_block", "full") for loop in ("reference", "studio")]
    assert all(r["wall_seconds"] > 0 and 0 <= r["val_accuracy"] <= 1 for r in rows)
    assert "feature cache: on" in out  # the head-only scenario trains on cached features


GPU_CHECK_ROWS = ["environment", "fp16 + GradScaler", "bf16", "channels_last on/off",
                  "feature + image cache", "pinned memory", "stop within a batch",
                  "OOM recovered", "memory back to baseline", "ONNX export verified",
                  "LoRA trains and merges",
                  "throughput resnet18", "throughput resnet50", "throughput vit_b_16"]


def test_gpu_check_cpu_smoke_run_has_every_row_ok_or_skipped_with_a_reason(
        tmp_path: Path) -> None:
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu",
                           "--json", str(tmp_path / "rows.json")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    written = json.loads((tmp_path / "rows.json").read_text())
    assert written["qt_modules"] == []  # engine only: it runs where PySide6 is not installed
    rows = written["rows"]
    assert [r["check"] for r in rows] == GPU_CHECK_ROWS
    assert all(r["result"] == "ok" or (r["result"] == "skipped" and r["why"]) for r in rows), rows
    by_name = {r["check"]: r for r in rows}
    assert by_name["fp16 + GradScaler"]["why"] == "fp16 needs CUDA"
    assert "verified" in by_name["ONNX export verified"]["figures"]
    assert "check" in done.stdout and "0 FAILED" in done.stdout  # the table was printed


def test_gpu_check_without_cuda_says_so_in_one_sentence() -> None:
    import subprocess

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "no CUDA device: run with --cpu for the smoke version"
