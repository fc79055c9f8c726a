"""`studio export` as a user meets it: a run trained with `studio train` exported in a command,
the verification printed in a few lines, exit 0 only when verified, one-sentence errors."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import studio.engine.export as export
import studio.engine.export.torch_formats as torch_formats
from studio.cli import build_parser, main
from studio.cli.evaluate import EXPORT_FORMATS


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`studio train`: resnet18 at 32 px, 3 epochs on 3 colours × 6 images."""
    root = tmp_path_factory.mktemp("cli-export")
    rng = random.Random(0)
    for name, colour in {"red": (220, 30, 30), "green": (30, 200, 40),
                         "blue": (40, 60, 220)}.items():
        (root / "data" / name).mkdir(parents=True)
        for i in range(6):
            image = Image.new("RGB", (16, 16), colour)
            for _ in range(32):
                image.putpixel((rng.randrange(16), rng.randrange(16)),
                               tuple(min(255, max(0, c + rng.randint(-60, 60))) for c in colour))
            image.save(root / "data" / name / f"{i}.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["train", "--data", str(root / "data"), "--out", str(root / "run"),
                     "--backbone", "resnet18", "--weights", "none", "--image-size", "32",
                     "--epochs", "3", "--batch-size", "4", "--base-lr", "1e-3", "--schedule",
                     "none", "--augment", "none", "--workers", "0", "--precision", "fp32",
                     "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    yield root / "run"


def export_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["export", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_cli_offers_the_engine_formats() -> None:
    assert EXPORT_FORMATS == export.FORMATS
    help_text = build_parser().format_help()
    assert "export" in help_text


def test_onnx_export_prints_the_verification_and_exits_0(
        capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "deploy" / "classifier.onnx"
    code, out, err = export_cli(capsys, str(run_dir), "--format", "onnx", "--out", str(target))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"Exported {run_dir} (resnet18, best checkpoint, epoch")
    assert "classifier.onnx" in lines[1] and "exporter, opset 18" in lines[1]
    verified = next(line for line in lines if "verified:" in line)
    assert "3 real images" in verified and "max |Δlogit|" in verified
    assert "top-1 agreement 100.0 %" in verified
    assert lines[-1] == f"Report: {target.parent / 'export_report.json'}"
    assert len(lines) <= 7
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": np.zeros((7, 3, 32, 32), np.float32)})[0]
    assert logits.shape == (7, 3)
    report = json.loads((target.parent / "export_report.json").read_text())
    assert report["verified"] is True and report["exports"][0]["files"][0]["name"] == \
        "classifier.onnx"


def test_safetensors_goes_to_the_run_folder_by_default(
        capsys: pytest.CaptureFixture[str], run_dir: Path) -> None:
    code, out, err = export_cli(capsys, str(run_dir), "--format", "safetensors",
                                "--checkpoint", "last")
    assert code == 0, err
    folder = run_dir / "export" / "safetensors"
    assert (folder / "model.safetensors").is_file() and (folder / "labels.json").is_file()
    assert "last checkpoint" in out and "bit-identical" in out


def test_a_mismatch_exits_1_with_one_sentence_and_a_report(
        capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = torch_formats.run_torchscript

    def drifted(path: Path, batches: list[torch.Tensor]) -> list[np.ndarray]:
        return [logits * 1.1 + 0.05 for logits in original(path, batches)]

    monkeypatch.setattr(torch_formats, "run_torchscript", drifted)
    code, out, err = export_cli(capsys, str(run_dir), "--format", "torchscript", "--out",
                                str(tmp_path))
    assert code == 1 and out == ""
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(message) == 1 and "Traceback" not in err
    assert "does not match PyTorch" in message[0] and "export_report.json" in message[0]
    assert json.loads((tmp_path / "export_report.json").read_text())["verified"] is False
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("args,match", [
    (["{missing}"], "does not exist"),
    (["{run}", "--opset", "3"], "opset must be between"),
    (["{run}", "--out", "{file}"], "is a file"),
])
def test_user_errors_are_one_sentence_and_exit_1(
        capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path, args: list[str],
        match: str) -> None:
    (tmp_path / "notes.txt").write_text("not a folder")
    values: dict[str, Any] = {"missing": tmp_path / "no-run", "run": run_dir,
                              "file": tmp_path / "notes.txt"}
    code, out, err = export_cli(capsys, *[a.format(**values) for a in args])
    assert code == 1
    [line] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert match in line and "Traceback" not in err


def test_an_unknown_format_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                            run_dir: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run_dir), "--format", "tflite"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
