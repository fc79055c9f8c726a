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
    assert bench.main(["--smoke", "--out", str(tmp_path / "work"),  # type: ignore[attr-defined]
                       "--json", str(tmp_path / "figures.json")]) == 0
    out = capsys.readouterr().out
    for scenario in ("head", "last_block", "full"):
        assert f"{scenario}/reference: fp32" in out and f"{scenario}/studio: " in out
    rows = json.loads((tmp_path / "figures.json").read_text())
    assert [(r["scenario"], r["loop"]) for r in rows] == [
        (s, loop) for s in ("head", "last_block", "full") for loop in ("reference", "studio")]
    assert all(r["wall_seconds"] > 0 and 0 <= r["val_accuracy"] <= 1 for r in rows)
    assert "feature cache: on" in out  # the head-only scenario trains on cached features
