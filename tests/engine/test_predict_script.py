"""The bundle's predict.py sees the pixels training saw, and answers as `studio predict` does.

predict.py (``studio/engine/export/predict_script.py``, copied verbatim) cannot import studio, so
its copy of the pixel pipeline is checked against ``studio.engine.images`` on the images that
trip a naive loader: 16-bit with every value below 256, 16-bit full range, float TIFF in 0–1 and
out of it, CMYK JPEG, palette PNG with a transparent index, grayscale with alpha, 1-bit, an
EXIF-rotated JPEG and a strip longer than the aspect limit. Then the bundle's predict.py runs
in a subprocess, beside the run's calibrated model.onnx, on the same images and is compared with
`studio predict` on the same run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.cli import main
from studio.engine.export import export_run, predict_py, read_onnx_metadata
from studio.engine.export import predict_script as script
from studio.engine.images import Preprocessing, build_transforms, load_image

WAIT = 120  # seconds: a bound on the subprocess


def write_odd_images(folder: Path) -> list[Path]:
    """One file per awkward kind, each with a gradient so scaling mistakes show."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 1, 24 * 20).reshape(20, 24)
    paths = []

    def save(name: str, image: Image.Image, **options: object) -> None:
        paths.append(folder / name)
        image.save(folder / name, **options)

    save("low16.png", Image.fromarray((ramp * 200).astype(np.uint16)))  # I;16, all < 256
    save("full16.png", Image.fromarray((ramp * 65535).astype(np.uint16)))
    save("unit.tiff", Image.fromarray(ramp.astype(np.float32)))  # F in 0-1
    save("wide.tiff", Image.fromarray((ramp * 3000 - 500).astype(np.float32)))  # F, any range
    rgb = Image.fromarray((np.stack([ramp, ramp[::-1], 1 - ramp], -1) * 255).astype(np.uint8))
    save("cmyk.jpg", rgb.convert("CMYK"), quality=95)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette.png", palette, transparency=3)
    gray = rgb.convert("L")
    save("gray.png", gray)
    save("gray_alpha.png", Image.merge("LA", (gray, gray.point(lambda v: 255 - v))))
    save("bilevel.png", gray.convert("1"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise
    save("rotated.jpg", rgb, exif=exif, quality=95)
    save("strip.png", rgb.resize((120, 10)))
    return paths


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_odd_images(tmp_path_factory.mktemp("odd"))


def test_predict_py_loads_the_pixels_training_loads(odd_images: list[Path]) -> None:
    for path in odd_images:
        ours, theirs = load_image(path), script.load_rgb(path)
        assert theirs.mode == "RGB" and theirs.size == ours.size, path.name
        assert np.array_equal(np.asarray(theirs), np.asarray(ours)), path.name
    low = np.asarray(script.load_rgb(odd_images[0]))
    assert low.max() <= 1, "16-bit values below 256 are 16-bit data, scaled by 257"
    assert np.asarray(script.load_rgb(odd_images[2])).max() == 255, "float 0-1 is scaled"


@pytest.mark.parametrize("prep", [Preprocessing(37, 32), Preprocessing(
    40, 33, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic")], ids=["bilinear", "bicubic"])
def test_predict_py_preprocesses_as_the_eval_transform(odd_images: list[Path],
                                                       prep: Preprocessing) -> None:
    transform = build_transforms(prep)
    for path in odd_images:
        image = load_image(path)
        expected = transform(image).numpy()[None]
        got = script.preprocess(image, prep.to_json())
        assert got.shape == expected.shape and got.dtype == np.float32, path.name
        np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=path.name)


def test_the_bundle_ships_predict_script_verbatim_without_studio() -> None:
    text = predict_py()
    assert text == Path(script.__file__).read_text(encoding="utf-8")
    assert "import studio" not in text and "from studio" not in text


def test_bundle_predict_py_agrees_with_studio_predict_on_odd_images(
        trained_run: Path, odd_images: list[Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the bundle's two files that matter here, without its int8/TorchScript/safetensors (a
    # bundle's predict.py is predict_py() verbatim: test_export runs one from a real bundle)
    folder = tmp_path / "bundle"
    report = export_run(trained_run, "onnx", folder)
    assert report.verified and report.calibration is not None
    (folder / "predict.py").write_text(predict_py(), encoding="utf-8")
    calibration = read_onnx_metadata(folder / "model.onnx")["calibration"]
    temperature, threshold = calibration["temperature"], calibration["unknown_threshold"]
    assert calibration == report.calibration

    names = [str(p) for p in odd_images]
    assert main(["predict", str(trained_run), *names, "--json", "--top", "3"]) == 0
    studio = json.loads(capsys.readouterr().out)
    done = subprocess.run([sys.executable, "-I", str(folder / "predict.py"), *names, "--json",
                           "--top", "3"], capture_output=True, text=True, timeout=WAIT,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    bundle = [json.loads(line) for line in done.stdout.splitlines()]
    labels = studio["labels"]
    assert len(bundle) == len(studio["predictions"]) == len(odd_images)
    for ours, theirs in zip(studio["predictions"], bundle, strict=True):
        raw = {item["class"]: item["probability"] for item in ours["top"]}
        logits = np.log(np.maximum([raw[name] for name in labels], 1e-30))
        expected = dict(zip(labels, script.probabilities(logits, temperature), strict=True))
        got = {item["label"]: item["probability"] for item in theirs["top"]}
        assert theirs["class"] == ours["top"][0]["class"], theirs["image"]
        for name in labels:
            assert got[name] == pytest.approx(expected[name], abs=1e-4), theirs["image"]
        unsure = threshold is not None and max(got.values()) < threshold
        assert theirs["unknown"] is unsure
        assert theirs["answer"] == ("unknown" if unsure else theirs["class"])
