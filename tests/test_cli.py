"""The command line as a user meets it: exit codes, one-sentence errors, JSON shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from studio.cli import main


def _images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (i * 20 % 255, 0, 0)).save(folder / f"{i}.png")


def test_scan_json_has_the_documented_shape(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _images(tmp_path / "cats", 10)
    _images(tmp_path / "dogs", 5)
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"")
    assert main(["scan", str(tmp_path), "--val-fraction", "0.2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["cats", "dogs"]
    assert report["splits"] == {"train": {"cats": 8, "dogs": 4}, "val": {"cats": 2, "dogs": 1}}
    assert report["bad_files"] == [{"path": str(tmp_path / "dogs" / "broken.jpg"),
                                    "reason": "empty file (0 bytes)"}]
    assert isinstance(report["warnings"], list)


def test_scan_report_is_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _images(tmp_path / "cats", 40)
    _images(tmp_path / "dogs", 4)
    assert main(["scan", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 classes, 44 images" in out
    assert "imbalanced" in out and "'cats'" in out


def test_scan_of_the_bundled_sample(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--sample", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["0", "1", "2", "3", "4"]
    assert sum(report["splits"]["train"].values()) + sum(report["splits"]["val"].values()) == 300
    assert report["bad_files"] == []


@pytest.mark.parametrize("setup,message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "no classes found"),
    (lambda p: _images(p / "only", 3), "only one class ('only')"),
])
def test_scan_errors_are_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      setup, message: str) -> None:
    folder = tmp_path / "data"
    setup(folder)
    assert main(["scan", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_bad_val_fraction_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(tmp_path), "--val-fraction", "2"]) == 1
    assert "--val-fraction must be between 0 and 0.9" in capsys.readouterr().err


def test_models_json_lists_the_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    zoo = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert len(zoo) >= 80
    assert zoo["resnet18"]["params"] == 11_689_512
    assert {"gflops", "acc1", "input_size"} <= set(zoo["resnet18"])


def test_models_table_filters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "efficientnet_v2"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_v2_s" in out and "resnet18" not in out and "3 backbones" in out


def test_python_dash_m_studio_works_like_studio() -> None:
    result = subprocess.run([sys.executable, "-m", "studio", "--version"], capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.startswith("studio ")


def test_models_lists_timm_models_and_counts_a_few_on_the_spot(
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("timm")
    assert main(["models", "timm/resnet18"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("timm/resnet18 "))
    assert "resnet" in line and "11.7M" in line and "224" in line and "a1_in1k" in line
    assert main(["models", "timm/", "--json"]) == 0
    rows = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert len(rows) > 1000 and rows["timm/resnet18"]["params"] == 11_689_512  # cached now
    assert any(row["params"] is None for row in rows.values())  # never a made-up number
