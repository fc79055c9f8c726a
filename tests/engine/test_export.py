"""Export as a user meets it: every format written from a trained run, each file reloaded with its
own runtime (onnxruntime; ``torch.jit.load`` in a fresh process without studio; safetensors),
labels and preprocessing carried along, a dynamic batch axis, parity with PyTorch, a broken
export refused, ``predict.py`` classifying a PNG, and one model of every zoo family exported.

The run is resnet18 at 32 px trained 3 epochs on 3 colours × 6 images: unlike mobilenet_v3_small
and squeezenet1_1 from scratch (their eval-mode logits stayed constant across images after a few
epochs), it separates the colours, so parity and predict.py are checked on logits that matter.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torchvision import models
from torchvision.models.convnext import CNBlockConfig

import studio.engine.export as export
import studio.engine.export.onnx as onnx_exporters
import studio.engine.export.torch_formats as torch_formats
from studio.engine.backbones import (
    backbone_info,
    build_model,
    find_head,
    list_backbones,
    make_head,
)
from studio.engine.checkpoint import load_checkpoint
from studio.engine.config import (
    ConfigError,
    DataConfig,
    HeadConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from studio.engine.events import Outcome
from studio.engine.export import (
    ExportError,
    compare,
    export_bundle,
    export_model_onnx,
    export_run,
    load_run_model,
    read_onnx_metadata,
    read_torchscript_extras,
)
from studio.engine.images import Preprocessing, build_transforms, load_image
from studio.engine.runs import rebuild_model
from studio.engine.trainer import Trainer

LABELS = ["blue", "green", "red"]  # the tiny dataset's classes, sorted
SIZE = 32
WAIT = 120  # seconds: a bound on subprocesses


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory,
            make_tiny_dataset: Callable[..., Path]) -> Path:
    """A finished tiny run: resnet18, 32 px, 3 epochs on 3 classes × 6 images of 16 px
    (cosine schedule, best by val_loss: with a constant rate, or with the first epoch that
    gets the 3 val images right counted best, a run this small ends wherever its last batch
    threw it)."""
    root = tmp_path_factory.mktemp("export-run")
    data = make_tiny_dataset(root / "data", per_class=6, size=16)
    config = RunConfig(
        data=DataConfig(root=str(data), image_size=SIZE, augment="none"),
        model=ModelConfig(backbone="resnet18", weights="none"),
        optim=OptimConfig(lr=1e-3, schedule="cosine"),
        train=TrainConfig(epochs=3, batch_size=4, workers=0, precision="fp32", device="cpu",
                          seed=0, monitor="val_loss"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from two busy cores
    try:
        result = Trainer(config, root / "run").fit()
    finally:
        torch.set_num_threads(threads)
    assert result.outcome is Outcome.COMPLETED, result.message
    return root / "run"


@pytest.fixture(scope="module")
def bundle(run_dir: Path) -> export.ExportReport:
    return export_bundle(run_dir)


@pytest.fixture(scope="module")
def images(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    """Every image of the dataset through the run's eval transforms, with labels and paths."""
    model, labels, prep, config = load_run_model(run_dir)
    paths = sorted(Path(config.data.root).glob("*/*.png"))
    transform = build_transforms(Preprocessing(prep["resize"], prep["crop"]))
    batch = torch.stack([transform(load_image(p)) for p in paths])
    targets = torch.tensor([labels.index(p.parent.name) for p in paths])
    return batch, targets, paths


@pytest.fixture
def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)).eval()


def reference(model: nn.Module, batch: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(batch).numpy()


def corrupt_onnx(path: Path) -> None:
    """What a wrong translation looks like: every weight changed."""
    proto = onnx.load(str(path))
    for tensor in proto.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32 and array.size > 1:
            tensor.CopyFrom(numpy_helper.from_array(array * 1.5 + 0.1, tensor.name))
    onnx.save(proto, str(path))


def report_json(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "export_report.json").read_text(encoding="utf-8"))


# -- loading a run ------------------------------------------------------------------------------


def test_load_run_model_rebuilds_the_trained_network(run_dir: Path,
                                                     images: tuple[Any, ...]) -> None:
    model, labels, prep, config = load_run_model(run_dir)
    assert not model.training
    assert labels == LABELS
    assert (prep["crop"], prep["channel_order"], prep["layout"]) == (SIZE, "RGB", "NCHW")
    assert config.model.backbone == "resnet18"
    saved = load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())
    batch, targets, _ = images
    assert (reference(model, batch).argmax(1) == targets.numpy()).mean() >= 0.9, \
        "the fixture's run should tell the colours apart"
    last = load_run_model(run_dir, checkpoint="last")
    assert last.labels == LABELS


@pytest.mark.parametrize("problem,match", [
    ("missing", "does not exist"), ("empty", "holds no checkpoint"),
    ("no_best", "--checkpoint last"),
])
def test_unusable_run_folders_are_one_sentence(run_dir: Path, tmp_path: Path, problem: str,
                                               match: str) -> None:
    folder = tmp_path / "run"
    if problem == "empty":
        folder.mkdir()
    elif problem == "no_best":
        shutil.copytree(run_dir, folder)
        (folder / "checkpoints" / "best.pt").unlink()
    with pytest.raises(ExportError, match=match) as error:
        load_run_model(folder)
    assert "\n" not in str(error.value)


def test_wrong_checkpoint_name_and_opset_are_config_errors(run_dir: Path) -> None:
    with pytest.raises(ConfigError, match="best or last"):
        load_run_model(run_dir, checkpoint="first")
    with pytest.raises(ConfigError, match="opset must be between 7"):
        export_run(run_dir, "onnx", opset=3)
    with pytest.raises(ConfigError, match="format must be one of"):
        export_run(run_dir, "tflite")


def test_googlenet_from_imagenet_weights_keeps_its_input_transform(tmp_path: Path) -> None:
    """torchvision sets transform_input when it loads Inception/GoogLeNet weights; it is not in
    the state dict, so the rebuild must set it or the export would differ from training."""
    built = build_model(ModelConfig(backbone="googlenet", weights="none"), 3, 64)
    config = RunConfig(model=ModelConfig(backbone="googlenet", weights="IMAGENET1K_V1"),
                       data=DataConfig(image_size=64))
    prep = built.preprocessing.to_json()
    model = rebuild_model(config, LABELS, prep, built.model.state_dict(), tmp_path / "x.pt")
    assert model.transform_input is True
    scratch = RunConfig(model=ModelConfig(backbone="googlenet", weights="none"),
                        data=DataConfig(image_size=64))
    model = rebuild_model(scratch, LABELS, prep, built.model.state_dict(), tmp_path / "x.pt")
    assert model.transform_input is False


# -- the bundle: every format -------------------------------------------------------------------


def test_bundle_writes_every_format_verified(bundle: export.ExportReport,
                                             run_dir: Path) -> None:
    folder = run_dir / "export" / "bundle"
    assert bundle.out_dir == folder and bundle.verified
    names = {p.name for p in folder.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "model.pt", "model.safetensors", "labels.json",
            "preprocessing.json", "config.toml", "README.md", "predict.py", "calibration.json",
            "export_report.json"} <= names
    assert not [n for n in names if n.startswith(".")], "no scratch folder is left behind"
    report = report_json(folder)
    assert report["verified"] is True and report["format"] == "bundle"
    assert report["labels"] == LABELS and report["backbone"] == "resnet18"
    assert report["images_checked"] == 3  # one validation image per class
    by_format = {entry["format"]: entry for entry in report["exports"]}
    assert set(by_format) == {"onnx", "int8", "torchscript", "safetensors"}
    for entry in by_format.values():
        assert entry["verified"] is True
        for file in entry["files"]:
            assert (folder / file["name"]).stat().st_size == file["bytes"]
    onnx_entry = by_format["onnx"]
    assert onnx_entry["exporter"] in export.ONNX_EXPORTERS
    assert onnx_entry["opset"] == export.DEFAULT_OPSET
    assert onnx_entry["images_checked"] == 3 and onnx_entry["inputs_checked"] == 11
    assert onnx_entry["top1_agreement"] == 1.0 and onnx_entry["max_abs_diff"] < 1e-3
    assert by_format["torchscript"]["max_abs_diff"] < 1e-4
    assert RunConfig.from_toml((folder / "config.toml").read_text()).model.backbone == "resnet18"
    record = json.loads((folder / "run.json").read_text())  # the run's reproducibility record
    assert record == json.loads((run_dir / "run.json").read_text())
    card = (folder / "README.md").read_text()
    assert f"torch {record['torch']}" in card and "`run.json`" in card


def test_onnx_runs_in_onnxruntime_with_metadata_and_a_dynamic_batch(
        bundle: export.ExportReport, run_dir: Path, images: tuple[Any, ...]) -> None:
    path = run_dir / "export" / "bundle" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [given], [produced] = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, produced.name) == ("input", "tensor(float)", "logits")
    assert isinstance(given.shape[0], str) and given.shape[1:] == [3, SIZE, SIZE]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["labels"]) == LABELS
    prep = json.loads(meta["preprocessing"])
    assert {"resize", "crop", "mean", "std"} <= set(prep)
    assert (prep["crop"], prep["channel_order"], prep["layout"]) == (SIZE, "RGB", "NCHW")
    assert prep["mean"] == pytest.approx([0.485, 0.456, 0.406])
    model = load_run_model(run_dir).model
    batch = images[0]
    for size in (1, 7):
        logits = session.run(["logits"], {"input": batch[:size].numpy()})[0]
        assert logits.shape == (size, 3)
        np.testing.assert_allclose(logits, reference(model, batch[:size]), rtol=1e-3, atol=1e-4)
    assert read_onnx_metadata(path)["labels"] == LABELS


def test_torchscript_loads_in_a_fresh_process_without_studio(
        bundle: export.ExportReport, run_dir: Path, images: tuple[Any, ...],
        tmp_path: Path) -> None:
    path = run_dir / "export" / "bundle" / "model.pt"
    batch = images[0][:7].contiguous()
    torch.save(batch, tmp_path / "batch.pt")
    code = textwrap.dedent(f"""
        import json, sys, torch
        extra = {{"labels.json": "", "preprocessing.json": ""}}
        model = torch.jit.load({str(path)!r}, _extra_files=extra)
        batch = torch.load({str(tmp_path / "batch.pt")!r}, weights_only=True)
        with torch.no_grad():
            one, seven = model(batch[:1]), model(batch)
        torch.save(seven, {str(tmp_path / "out.pt")!r})
        print(json.dumps({{"labels": json.loads(extra["labels.json"]),
                           "prep": json.loads(extra["preprocessing.json"]),
                           "shapes": [list(one.shape), list(seven.shape)],
                           "studio": sorted(m for m in sys.modules if m.startswith("studio"))}}))
    """)
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          timeout=WAIT, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["labels"] == LABELS and found["prep"]["crop"] == SIZE
    assert found["shapes"] == [[1, 3], [7, 3]]
    assert found["studio"] == []
    logits = torch.load(tmp_path / "out.pt", weights_only=True).numpy()
    np.testing.assert_allclose(logits, reference(load_run_model(run_dir).model, batch),
                               rtol=1e-3, atol=1e-4)
    assert read_torchscript_extras(path)["labels"] == LABELS


def test_safetensors_holds_the_weights_with_labels_and_preprocessing_beside(
        bundle: export.ExportReport, run_dir: Path) -> None:
    folder = run_dir / "export" / "bundle"
    tensors = load_file(str(folder / "model.safetensors"))
    state = load_run_model(run_dir).model.state_dict()
    assert set(tensors) == set(state)
    assert all(torch.equal(tensors[k], v) for k, v in state.items())
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        header = handle.metadata()
    assert json.loads(header["labels"]) == LABELS and header["backbone"] == "resnet18"
    assert json.loads((folder / "labels.json").read_text()) == LABELS
    prep = json.loads((folder / "preprocessing.json").read_text())
    assert (prep["resize"], prep["crop"], prep["channel_order"]) == (37, SIZE, "RGB")


def test_int8_is_smaller_and_reports_the_accuracy_change(bundle: export.ExportReport,
                                                         run_dir: Path,
                                                         images: tuple[Any, ...]) -> None:
    folder = run_dir / "export" / "bundle"
    entry = next(e for e in report_json(folder)["exports"] if e["format"] == "int8")
    assert entry["method"].startswith("static") and entry["calibration_images"] == 15
    assert entry["bytes_int8"] < 0.4 * entry["bytes_fp32"]
    assert entry["accuracy_images"] == 3
    assert entry["accuracy_change"] == pytest.approx(entry["accuracy_int8"]
                                                     - entry["accuracy_fp32"])
    session = ort.InferenceSession(str(folder / "model.int8.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["labels"]) == LABELS
    for size in (1, 7):
        assert session.run(["logits"], {"input": images[0][:size].numpy()})[0].shape == (size, 3)


def test_predict_py_classifies_a_png_with_onnxruntime_alone(
        bundle: export.ExportReport, run_dir: Path, images: tuple[Any, ...],
        tmp_path: Path) -> None:
    batch, targets, paths = images
    model = load_run_model(run_dir).model
    right = np.flatnonzero(reference(model, batch).argmax(1) == targets.numpy())
    picked = paths[int(right[-1])]  # a red one the model gets right
    image = tmp_path / "photo.png"
    Image.open(picked).resize((48, 40)).save(image)  # another size: resize and crop matter
    folder = run_dir / "export" / "bundle"
    temperature = json.loads((folder / "calibration.json").read_text())["temperature"]
    expected = torch.softmax(torch.from_numpy(reference(
        model, build_transforms(Preprocessing(37, SIZE))(load_image(image))[None])
        / temperature), 1)[0]
    done = subprocess.run([sys.executable, "-I", str(folder / "predict.py"), str(image),
                           "--show-class"],
                          capture_output=True, text=True, timeout=WAIT, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.strip().splitlines()
             if not line.startswith("unknown")]
    name, probability = lines[0].split("\t")
    assert name == picked.parent.name == LABELS[int(expected.argmax())]
    assert float(probability) == pytest.approx(float(expected.max()), abs=1e-3)
    assert len(lines) == 3


def test_model_card_names_backbone_classes_metrics_and_verification(
        bundle: export.ExportReport, run_dir: Path) -> None:
    card = (run_dir / "export" / "bundle" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("# resnet18 fine-tuned on 3 classes")
    assert all(f". {name}" in card for name in LABELS)
    assert "Best epoch" in card and "val_loss" in card
    assert "| onnx | `model.onnx` |" in card and "opset 18" in card
    assert card.count("| yes |") == 4 and "python predict.py" in card


# -- single formats -----------------------------------------------------------------------------


def test_a_gone_dataset_verifies_on_the_random_batch_and_says_so(run_dir: Path,
                                                                 tmp_path: Path) -> None:
    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("export"))
    config = RunConfig.load(moved / "config.toml")
    gone = str(tmp_path / "no-such-data")
    config.replace(data=config.data.__class__(root=gone, image_size=SIZE)).save(
        moved / "config.toml")
    report = export_run(moved, "torchscript", out=tmp_path / "out" / "net.pt")
    assert report.verified and (tmp_path / "out" / "net.pt").is_file()
    saved = report_json(tmp_path / "out")
    assert saved["images_checked"] == 0 and "not available" in saved["dataset"]
    assert saved["exports"][0]["inputs_checked"] == 8  # the random batch of 7 and one alone


def test_safetensors_format_alone_goes_to_the_default_folder(run_dir: Path) -> None:
    report = export_run(run_dir, "safetensors", checkpoint="last")
    folder = run_dir / "export" / "safetensors"
    assert report.verified and report.report_path == folder / "export_report.json"
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "labels.json",
                                                   "preprocessing.json", "export_report.json"}
    assert report_json(folder)["checkpoint"] == "last"


# -- verification refuses a wrong file ----------------------------------------------------------


def test_compare_allows_top1_flips_only_on_near_ties() -> None:
    ref = np.array([[1.0, 1.00001, 0.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    tie_flip = ref.copy()
    tie_flip[0] = [1.00001, 1.0, 0.0]
    parity = compare([ref], [tie_flip])
    assert parity.ok and parity.top1_agreement == 0.5 and parity.tie_disagreements == 1
    far = ref.copy()
    far[1] = [0.0, 3.0, 0.0]
    parity = compare([ref], [far])
    assert not parity.ok and parity.disagreements == 1 and not parity.within_tolerance
    # the bound of an input is atol + rtol · its largest |logit|, for every logit of it
    near_zero = ref.copy()
    near_zero[1, 2] += 2e-3  # 0 → 0.002 where the largest logit is 3: within 1e-4 + 3e-3
    assert compare([ref], [near_zero]).ok
    assert not compare([ref], [ref + 2e-3]).ok  # the first input's bound is 1e-4 + 1e-3
    assert not compare([ref], [np.full_like(ref, np.nan)]).ok


def test_an_ill_conditioned_model_is_judged_against_float64(tiny_net: nn.Module) -> None:
    """When PyTorch's own fp32 logits are far from exact, a file as close to the float64 result
    as PyTorch is faithful; a file farther off is not."""
    check = export.make_check_set(tiny_net, 16)
    exact = check.exact()
    assert exact is not None
    noisy = [e + 0.05 for e in exact]  # PyTorch fp32 as a badly conditioned model gives it
    check.reference = [n.astype(np.float32) for n in noisy]
    as_exact = [e - 0.03 for e in exact]  # 0.08 from PyTorch fp32, 0.03 from float64
    parity = export.judge(check, as_exact)
    assert parity.ok and parity.reference == "fp64"
    assert parity.pytorch_fp32_error == pytest.approx(0.05, rel=1e-3)
    assert parity.max_abs_diff_fp64 == pytest.approx(0.03, rel=1e-3)
    assert "as exact as PyTorch" in parity.describe()
    wrong = [e + 0.2 for e in exact]  # beyond twice PyTorch's own 0.05
    parity = export.judge(check, wrong)
    assert not parity.ok and parity.reference == "fp32"


def test_dynamo_failure_falls_back_to_the_torchscript_exporter(
        tiny_net: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(*args: Any) -> None:
        raise RuntimeError("no decomposition for aten.some_op")

    monkeypatch.setattr(onnx_exporters, "_onnx_dynamo", fails)
    result = export_model_onnx(tiny_net, tmp_path / "m.onnx", 16)
    assert result.verified and result.exporter == "torchscript"
    assert result.attempts[0]["exporter"] == "dynamo"
    assert "no decomposition" in result.attempts[0]["outcome"]
    assert read_onnx_metadata(tmp_path / "m.onnx")["labels"] == ["class_0", "class_1", "class_2"]


def test_a_dynamo_file_that_mismatches_falls_back(tiny_net: nn.Module, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    original = onnx_exporters._onnx_dynamo

    def wrong(model: nn.Module, target: Path, *args: Any) -> None:
        original(model, target, *args)
        corrupt_onnx(target)

    monkeypatch.setattr(onnx_exporters, "_onnx_dynamo", wrong)
    result = export_model_onnx(tiny_net, tmp_path / "m.onnx", 16)
    assert result.verified and result.exporter == "torchscript"
    assert result.attempts[0]["outcome"].startswith("mismatch")


def test_when_every_exporter_mismatches_the_export_fails_and_writes_nothing(
        tiny_net: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_onnx_dynamo", "_onnx_torchscript"):
        original = getattr(onnx_exporters, name)

        def wrong(model: nn.Module, target: Path, *args: Any, _original: Any = original) -> None:
            _original(model, target, *args)
            corrupt_onnx(target)

        monkeypatch.setattr(onnx_exporters, name, wrong)
    with pytest.raises(ExportError, match="does not match PyTorch") as error:
        export_model_onnx(tiny_net, tmp_path / "m.onnx", 16)
    assert error.value.result is not None and not error.value.result.verified
    assert [a["exporter"] for a in error.value.result.attempts] == ["dynamo", "torchscript"]
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_torchscript_run_fails_the_export_with_a_report(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = torch_formats.run_torchscript

    def off_by_a_bit(path: Path, batches: list[torch.Tensor]) -> list[np.ndarray]:
        return [logits + 0.01 for logits in original(path, batches)]

    monkeypatch.setattr(torch_formats, "run_torchscript", off_by_a_bit)
    with pytest.raises(ExportError, match="does not match PyTorch.*export_report.json"):
        export_run(run_dir, "torchscript", out=tmp_path)
    assert not (tmp_path / "model.pt").exists()
    saved = report_json(tmp_path)
    assert saved["verified"] is False
    assert saved["exports"][0]["verified"] is False
    assert saved["exports"][0]["max_abs_diff"] == pytest.approx(0.01, rel=1e-2)


def test_what_only_the_dynamo_exporter_can_export_fails_quietly_with_the_other(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """VGG at 32 px and AlexNet at 63 px in miniature: adaptive pooling to a size that does not
    divide the input, which the TorchScript-based exporter refuses (printing its whole graph
    from C++ as it does)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=8), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                        nn.Linear(36, 3)).eval()
    with pytest.raises(ExportError, match="torchscript exporter failed.*adaptive_avg_pool2d"):
        export_model_onnx(net, tmp_path / "m.onnx", 16, exporters=["torchscript"])
    result = export_model_onnx(net, tmp_path / "m.onnx", 16)
    assert result.verified and result.exporter == "dynamo"
    out, err = capfd.readouterr()
    assert "graph" not in out and "graph" not in err


@pytest.mark.parametrize("exporter", export.ONNX_EXPORTERS)
def test_weights_over_the_threshold_go_to_external_data(
        tiny_net: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        exporter: str) -> None:
    monkeypatch.setattr(onnx_exporters, "EXTERNAL_DATA_THRESHOLD", 0)
    out = tmp_path / "out"
    result = export_model_onnx(tiny_net, out / "model.onnx", 16, exporters=[exporter])
    assert result.verified and result.details["external_data"] is True
    assert [f.name for f in result.files] == ["model.onnx", "model.onnx.data"]
    moved = tmp_path / "elsewhere"
    shutil.move(out, moved)  # the data file is found beside the model, wherever it goes
    session = ort.InferenceSession(str(moved / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = torch.randn(7, 3, 16, 16)
    np.testing.assert_allclose(session.run(["logits"], {"input": batch.numpy()})[0],
                               reference(tiny_net, batch), rtol=1e-3, atol=1e-4)
    assert json.loads(session.get_modelmeta().custom_metadata_map["labels"])[0] == "class_0"
    assert (moved / "model.onnx").stat().st_size < 10_000  # the weights are not inside


def test_int8_quantizes_an_external_data_model(tiny_net: nn.Module, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_exporters, "EXTERNAL_DATA_THRESHOLD", 0)
    export_model_onnx(tiny_net, tmp_path / "model.onnx", 16)
    assert (tmp_path / "model.onnx.data").is_file()
    result = export.export_int8(tmp_path / "model.onnx", tmp_path / "q" / "model.int8.onnx",
                                ["a", "b", "c"], Preprocessing().at_size(16),
                                check=export.make_check_set(tiny_net, 16))
    assert result.verified and result.details["method"].startswith("dynamic")
    assert result.details["bytes_fp32"] == sum(
        (tmp_path / name).stat().st_size for name in ("model.onnx", "model.onnx.data"))
    assert [p.name for p in (tmp_path / "q").iterdir()] == ["model.int8.onnx"]
    assert "beyond" not in result.message  # int8 is not judged by the fp32 tolerance


# -- the zoo ------------------------------------------------------------------------------------

# The smallest model of every family exported and verified under onnxruntime, the way a run
# exports (the dynamo exporter first, the TorchScript-based one when it fails). torch.export
# makes the dynamo exporter slow: 5–12 s a model on the 2-core development machine, 17–21 s for
# Swin and MaxViT at 224 px. The dynamo exporter is checked here on one model of each kind of
# graph: plain convolutions (alexnet, squeezenet, resnet), channels-last LayerNorm (convnext),
# attention (vit), and VGG, whose 7×7 adaptive pooling of a small image only the dynamo
# exporter can express; every other family is checked with the TorchScript-based exporter (1–7 s),
# which is also what a run falls back to, so every family is proven to export and verify.
# benchmarks/bench_export_zoo.py runs the dynamo exporter on the whole zoo.
#
# Where a family's smallest zoo model is big (MaxViT and Swin take 224 px only, ViT-B/32 and VGG
# carry 88–133 M parameters, DenseNet-121 and ConvNeXt-T are deep), the default check exports
# that family's own torchvision class built narrow and shallow (SLIM): the same kinds of layers,
# the same input size, the same exporters and verification, in a fraction of the time (80 s →
# ~25 s on 2 cores). The zoo models themselves run with pytest --full-zoo.
ZOO_DYNAMO = ["alexnet", "convnext_tiny", "resnet18", "squeezenet1_1", "vgg11", "vit_b_32"]
ZOO_TORCHSCRIPT_ONLY = ["densenet121", "efficientnet_b0", "googlenet", "inception_v3", "maxvit_t",
                        "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf",
                        "shufflenet_v2_x0_5", "swin_t"]


def _slim_vgg_like(model: nn.Module) -> nn.Module:
    """VGG's and AlexNet's convolutions and adaptive pooling, with a narrow classifier (their
    4096-wide linear layers are nearly all of the 61–133 M parameters)."""
    old = model.classifier  # type: ignore[union-attr]
    width = next(m for m in old if isinstance(m, nn.Linear)).in_features
    model.classifier = nn.Sequential(nn.Dropout(), nn.Linear(width, 64), nn.ReLU(), nn.Dropout(),
                                     nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1000))
    return model


SLIM: dict[str, Callable[[], nn.Module]] = {
    "alexnet": lambda: _slim_vgg_like(models.alexnet(weights=None)),
    "vgg11": lambda: _slim_vgg_like(models.vgg11(weights=None)),
    "vit_b_32": lambda: models.VisionTransformer(image_size=32, patch_size=32, num_layers=2,
                                                 num_heads=2, hidden_dim=32, mlp_dim=64),
    "convnext_tiny": lambda: models.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1),
                                              CNBlockConfig(64, 128, 1),
                                              CNBlockConfig(128, None, 1)]),
    "densenet121": lambda: models.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2),
                                           num_init_features=16),
    # two blocks a stage: the second one's windows are shifted
    "swin_t": lambda: models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2, 2, 2],
                                             num_heads=[1, 1, 2, 2], window_size=[7, 7],
                                             stochastic_depth_prob=0.0),
    "maxvit_t": lambda: models.MaxVit(input_size=(224, 224), stem_channels=16, partition_size=7,
                                      block_channels=[16, 32, 64, 128], block_layers=[1, 1, 1, 1],
                                      head_dim=8, stochastic_depth_prob=0.0),
}


def test_the_zoo_check_covers_every_family() -> None:
    families = {info.family for info in list_backbones()}
    covered = {backbone_info(name).family for name in ZOO_DYNAMO + ZOO_TORCHSCRIPT_ONLY}
    assert covered == families


def _zoo_input_size(name: str) -> int:
    info = backbone_info(name)
    if info.family == "vision_transformer":
        patch = int(name.rsplit("_", 1)[-1])
        return patch * math.ceil(32 / patch)
    return max(32, info.min_size)


def _settle_batchnorm(model: nn.Module, size: int) -> None:
    """BatchNorm statistics from two random batches: with the initial ones MobileNet's or
    EfficientNet's logits are the same for every input, and a comparison would prove little."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    if norms:
        generator = torch.Generator().manual_seed(1)
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(torch.randn(8 if size < 100 else 2, 3, size, size, generator=generator))
    model.eval()


@pytest.fixture
def _two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _check_export_of(model: nn.Module, name: str, head_name: str, tmp_path: Path) -> None:
    size = _zoo_input_size(name)
    head = model.get_submodule(head_name)
    nn.init.normal_(head.weight, std=head.weight[0].numel() ** -0.5)  # O(1) logits, not ~0
    _settle_batchnorm(model, size)
    exporters = ["torchscript"] if name in ZOO_TORCHSCRIPT_ONLY else list(export.ONNX_EXPORTERS)
    result = export_model_onnx(model, tmp_path / "m.onnx", size, exporters=exporters)
    assert result.verified and result.parity is not None and result.parity.ok
    assert result.parity.inputs == 8  # batch 7 and batch 1 both ran under onnxruntime
    with torch.no_grad():
        logits = model(torch.randn(4, 3, size, size))
    assert float(logits.std(0).mean()) > export.ATOL, "logits that ignore the input prove nothing"


def _zoo_params(slim: bool) -> list[Any]:
    """The slim stand-in by default and the zoo model under --full-zoo, for the SLIM families;
    the zoo model itself for the others."""
    return [pytest.param(name, marks=() if (name in SLIM) == slim else pytest.mark.full_zoo)
            for name in ZOO_DYNAMO + ZOO_TORCHSCRIPT_ONLY if slim is False or name in SLIM]


@pytest.mark.zoo
@pytest.mark.usefixtures("_two_threads")
@pytest.mark.parametrize("name", _zoo_params(slim=False))
def test_one_model_of_every_family_exports_to_onnx_and_verifies(name: str,
                                                                 tmp_path: Path) -> None:
    size = _zoo_input_size(name)
    torch.manual_seed(0)  # the same weights whatever ran before
    built = build_model(ModelConfig(backbone=name, weights="none"), 3, size)
    _check_export_of(built.model, name, built.head, tmp_path)


@pytest.mark.zoo
@pytest.mark.usefixtures("_two_threads")
@pytest.mark.parametrize("name", _zoo_params(slim=True))
def test_a_slim_model_of_the_big_families_exports_to_onnx_and_verifies(name: str,
                                                                        tmp_path: Path) -> None:
    """The family's torchvision class, narrow and shallow, with its head replaced as
    build_model replaces it."""
    torch.manual_seed(0)
    model = SLIM[name]()
    head_name = find_head(model, 1000)
    model.set_submodule(head_name, make_head(model.get_submodule(head_name), 3, HeadConfig()))
    _check_export_of(model, name, head_name, tmp_path)
