"""`studio eval`, `studio predict` and `studio train --find-lr` as a user meets them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from studio.cli import main

LABELS = ["blue", "green", "red"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_prints_a_readable_report(trained_run: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "eval", str(trained_run))
    assert code == 0
    assert "9 val images" in out and "accuracy" in out
    for name in [*LABELS, "macro avg", "weighted avg"]:
        assert name in out


def test_eval_json_has_the_documented_keys(trained_run: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "eval", str(trained_run), "--json", "--checkpoint", "last")
    assert code == 0
    data = json.loads(out)
    assert data["labels"] == json.loads((trained_run / "labels.json").read_text())
    assert 0.0 <= data["accuracy"] <= 1.0
    assert set(data["per_class"]) == set(LABELS)
    assert set(data["per_class"]["red"]) == {"precision", "recall", "f1", "support"}
    matrix = data["confusion_matrix"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    assert [sum(row) for row in matrix] == [data["per_class"][c]["support"] for c in LABELS]
    assert data["checkpoint"] == "last" and data["split"] == "val"


def test_eval_on_another_folder(trained_run: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    for name, colour in (("red", (220, 30, 30)), ("blue", (40, 60, 220))):
        (tmp_path / "test" / name).mkdir(parents=True)
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), colour).save(tmp_path / "test" / name / f"{i}.png")
            Image.new("RGB", (16, 16), colour).save(tmp_path / "train" / name / f"{i}.png")
    code, out, _ = run_cli(capsys, "eval", str(trained_run), "--data", str(tmp_path), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["split"] == "test" and data["images"] == 4
    assert data["per_class"]["green"]["support"] == 0


@pytest.mark.parametrize("args,match", [
    (["eval", "{missing}"], "does not exist"),
    (["eval", "{run}", "--data", "{missing}"], "does not exist"),
    (["predict", "{missing}", "x.png"], "does not exist"),
])
def test_eval_errors_are_one_sentence(trained_run: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], args: list[str],
                                      match: str) -> None:
    filled = [a.format(run=trained_run, missing=tmp_path / "nowhere") for a in args]
    code, _, err = run_cli(capsys, *filled)
    assert code == 1
    assert err.startswith("error: ") and match in err and err.count("\n") == 1


def test_predict_prints_top3_per_image_and_fails_for_a_bad_file(
        trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    red, green = tmp_path / "red.png", tmp_path / "green.jpg"
    Image.new("RGB", (20, 20), (220, 30, 30)).save(red)
    Image.new("RGB", (20, 20), (30, 200, 40)).save(green)
    code, out, _ = run_cli(capsys, "predict", str(trained_run), str(red), str(green))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"{red}: red ") and lines[1].startswith(f"{green}: green ")
    assert all(line.count("%") == 3 for line in lines)

    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    code, out, err = run_cli(capsys, "predict", str(trained_run), str(red), str(bad), "--json")
    assert code == 1
    assert "notes.png cannot be read" in err
    data = json.loads(out)
    assert data["labels"] == LABELS
    assert data["predictions"][0]["top"][0]["class"] == "red"
    assert len(data["predictions"][0]["top"]) == 3
    assert "error" in data["predictions"][1]


def test_predict_cam_writes_an_overlay_per_image(trained_run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pytorch_grad_cam")
    folder = tmp_path / "green"  # a class of the run: the true class of what is in it
    folder.mkdir()
    red, green = tmp_path / "a.png", folder / "b.png"
    Image.new("RGB", (20, 20), (220, 30, 30)).save(red)
    Image.new("RGB", (20, 20), (30, 200, 40)).save(green)
    out_dir = tmp_path / "cams"
    code, out, _ = run_cli(capsys, "predict", str(trained_run), str(red), str(green),
                           "--cam", str(out_dir))
    assert code == 0
    assert f"Class-activation maps: 2 in {out_dir}" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["a-red-cam.png", "b-green-cam.png",
                                                        "cam.json"]
    with Image.open(out_dir / "a-red-cam.png") as image:
        assert image.mode == "RGB" and image.size == (32, 32)  # what the model saw
    listing = json.loads((out_dir / "cam.json").read_text())
    assert [m["class"] for m in listing["maps"]] == ["red", "green"]
    assert listing["maps"][0]["explains"] == "predicted"

    true_dir = tmp_path / "true"
    code, out, err = run_cli(capsys, "predict", str(trained_run), str(red), str(green),
                             "--cam", str(true_dir), "--cam-class", "true", "--json")
    assert code == 0
    assert "a.png is in no folder named after a class" in err
    data = json.loads(out)
    assert data["predictions"][0]["cam"] is None
    assert data["predictions"][1]["cam"]["file"] == "b-green-cam.png"
    assert [p.name for p in true_dir.glob("*.png")] == ["b-green-cam.png"]


def test_predict_cam_without_grad_cam_says_what_to_install(
        trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import studio.engine.cam as cam

    monkeypatch.setattr(cam, "grad_cam_installed", lambda: False)
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 20), (220, 30, 30)).save(image)
    code, _, err = run_cli(capsys, "predict", str(trained_run), str(image), "--cam",
                           str(tmp_path / "cams"))
    assert code == 1
    assert "pip install 'finetune-studio[explain]'" in err and err.count("\n") == 1
    assert not (tmp_path / "cams").exists()


def test_train_find_lr_prints_a_suggestion_and_writes_nothing(
        tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "train", "--data", str(tiny_dataset), "--backbone",
                           "resnet18", "--weights", "none", "--image-size", "32",
                           "--freeze-preset", "head_only", "--batch-size", "8", "--workers", "0",
                           "--precision", "fp32", "--device", "cpu", "--find-lr",
                           "--find-lr-steps", "12", "--json")
    assert code == 0
    data = json.loads(out)
    assert len(data["lrs"]) == 12 and data["ended"] == "finished"
    assert not (tmp_path / "runs").exists()


def test_eval_json_carries_the_calibration(trained_run: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "eval", str(trained_run), "--json",
                           "--target-precision", "0.9")
    assert code == 0
    calibration = json.loads(out)["calibration"]
    assert {"ece", "ece_calibrated", "temperature", "bins", "unknown_threshold", "coverage",
            "target_precision"} <= set(calibration)
    assert calibration["target_precision"] == 0.9 and calibration["temperature"] > 0
    assert len(calibration["bins"]) == 15
    assert sum(b["count"] for b in calibration["bins"]) == calibration["images"] == 9


def test_a_target_precision_out_of_range_is_one_sentence(
        trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "eval", str(trained_run), "--target-precision", "1.5")
    assert code != 0 and "--target-precision must be above 0 and at most 1" in err
    assert "Traceback" not in err
