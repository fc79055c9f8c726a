"""Exporting a run folder written by the trainer: rebuild its model from a checkpoint, read real
images of its dataset to verify on (and to calibrate and measure int8 with), export one format
or the whole bundle, and write ``export_report.json`` beside the files — also when an export
fails, so that what was measured is never lost.

The CLI (``studio export``) and the Export page both come in through :func:`export_run`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from studio.engine.calibration import TARGET_PRECISION
from studio.engine.config import ConfigError, RunConfig
from studio.engine.config_io import atomic_write_text
from studio.engine.data import Sample, scan_folder
from studio.engine.errors import FULL, DatasetError, explain_os_error
from studio.engine.evaluate import fit_run_calibration
from studio.engine.export.bundle import model_card, predict_py
from studio.engine.export.onnx import export_int8, export_onnx, onnx_metadata
from studio.engine.export.results import ExportError, ExportReport, FormatResult
from studio.engine.export.torch_formats import export_safetensors, export_torchscript
from studio.engine.export.verify import CheckSet, make_check_set
from studio.engine.images import FolderDataset, build_transforms
from studio.engine.record import read_record
from studio.engine.runs import OpenedRun as _Run
from studio.engine.runs import open_run, preprocessing_from_json

CHECK_IMAGES = 32  # real validation images compared per export
ACCURACY_IMAGES = 256  # validation images for the int8 accuracy change
CALIBRATION_IMAGES = 64  # training images for int8 static calibration
REPORT_NAME = "export_report.json"

Progress = Callable[[str], None]


class RunModel(NamedTuple):
    """A run's model rebuilt from a checkpoint, in eval mode."""

    model: nn.Module
    labels: list[str]
    preprocessing: dict[str, Any]
    config: RunConfig


def load_run_model(run_dir: str | os.PathLike[str], checkpoint: str = "best") -> RunModel:
    """Rebuild a run's architecture (weights "none") and load its checkpoint strictly."""
    run = _open_run(run_dir, checkpoint)
    return RunModel(run.model, run.labels, run.preprocessing, run.config)


def _open_run(run_dir: str | os.PathLike[str], checkpoint: str) -> _Run:
    return open_run(run_dir, checkpoint, action="exporting", error=ExportError)


@dataclass
class _RunImages:
    check: torch.Tensor | None
    check_targets: torch.Tensor | None
    accuracy: torch.Tensor | None
    accuracy_targets: torch.Tensor | None
    calibration: torch.Tensor | None
    note: str


def _run_images(run: _Run, limit: int, accuracy_limit: int = 0,
                calibration_limit: int = 0) -> _RunImages:
    """Real images of the run's dataset through its eval transforms: validation images to check
    and measure accuracy on, training images to calibrate int8 with."""
    root = run.data_root
    if not root:
        return _RunImages(None, None, None, None, None,
                          "the run names no dataset folder; verified on a random batch only")
    try:
        scan = scan_folder(root, run.config.data.val_fraction, run.config.train.seed)
    except DatasetError as error:
        return _RunImages(None, None, None, None, None,
                          f"the dataset is not available ({error}); verified on a random batch "
                          f"only")
    index = {name: i for i, name in enumerate(run.labels)}
    samples: dict[str, list[Sample]] = {}
    for split, found in scan.splits.items():
        samples[split] = [Sample(s.path, index[scan.classes[s.label]]) for s in found
                          if scan.classes[s.label] in index]
    val = samples.get("val") or []
    split = "validation"
    if not val:
        val, split = samples.get("train") or [], "training"
    prep = preprocessing_from_json(run.preprocessing)
    transform = build_transforms(prep)
    check, check_targets = _load(_spread(val, limit), transform)
    accuracy, accuracy_targets = _load(val[:accuracy_limit] if accuracy_limit else [], transform)
    calibration, _ = _load(_spread(samples.get("train") or [], calibration_limit), transform)
    if check is None:
        note = f"{root} holds no images of the run's classes; verified on a random batch only"
    else:
        note = f"{check.shape[0]} {split} images of {root}"
    return _RunImages(check, check_targets, accuracy, accuracy_targets, calibration, note)


def _spread(samples: list[Sample], limit: int) -> list[Sample]:
    """Up to ``limit`` samples taken round-robin across classes, so every class is checked."""
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    chosen: list[Sample] = []
    queues = [list(v) for _, v in sorted(by_class.items())]
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return chosen


def _load(samples: list[Sample], transform: Any) -> tuple[torch.Tensor | None,
                                                           torch.Tensor | None]:
    if not samples:
        return None, None
    dataset = FolderDataset(samples, transform)
    items = [dataset[i] for i in range(len(dataset))]
    return (torch.stack([image for image, _ in items]),
            torch.tensor([label for _, label in items], dtype=torch.long))


def default_out(run_dir: str | os.PathLike[str], fmt: str) -> Path:
    """Where an export goes unless told: ``RUN_DIR/export/<format>/``."""
    return Path(run_dir) / "export" / fmt


def export_run(run_dir: str | os.PathLike[str], fmt: str = "onnx",
               out: str | os.PathLike[str] | None = None, checkpoint: str = "best",
               opset: int | None = None, progress: Progress | None = None,
               target_precision: float = TARGET_PRECISION) -> ExportReport:
    """Export a run folder in one format (or ``bundle``: all of them), verify, and write
    ``export_report.json`` beside the files. ``out`` is a folder, or for a single format also a
    file name with its suffix (``model.onnx``). Raises ExportError, after writing the report,
    when verification fails."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    _check_opset(opset)
    say = progress or (lambda message: None)
    out_dir, file_name = _resolve_out(run_dir, fmt, out)
    say(f"loading the {checkpoint} checkpoint of {run_dir}")
    run = _open_run(run_dir, checkpoint)
    try:
        if fmt == "bundle":
            return _bundle(run, out_dir, opset, say, target_precision)
        return _single(run, fmt, out_dir, file_name, opset, say, target_precision)
    except OSError as error:  # the output folder: missing parent, permissions, a full disk
        reason, _ = explain_os_error(error)
        todo = ("free space on that disk or choose another --out folder" if error.errno in FULL
                else "choose another --out folder that you may write to")
        where = error.filename or out_dir
        raise ExportError(f"exporting to {where} failed: {reason}; {todo}") from error


def export_bundle(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                  checkpoint: str = "best", opset: int | None = None,
                  progress: Progress | None = None,
                  target_precision: float = TARGET_PRECISION) -> ExportReport:
    """Every format in one folder, with a model card (README.md) and a ``predict.py`` that
    classifies an image file with onnxruntime, Pillow and numpy alone."""
    return export_run(run_dir, "bundle", out, checkpoint, opset, progress, target_precision)


def _check_opset(opset: int | None) -> None:
    if opset is None:
        return
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not 7 <= opset <= newest:
        raise ConfigError(f"opset must be between 7 and {newest} (the newest this onnx knows); "
                          f"got {opset}")


def _resolve_out(run_dir: str | os.PathLike[str], fmt: str,
                 out: str | os.PathLike[str] | None) -> tuple[Path, str | None]:
    if out is None:
        return default_out(run_dir, fmt), None
    out = Path(out).expanduser()
    spec = REGISTRY.get(fmt)
    if spec is not None and out.suffix.lower() in spec.suffixes and not out.is_dir():
        return out.parent, out.name
    if out.exists() and not out.is_dir():
        suffix = spec.suffixes[0] if spec is not None else ""
        raise ExportError(f"--out {out} is a file; give a folder (or a {suffix} file name "
                          f"for a single format)")
    return out, None


def _new_report(run: _Run, fmt: str, out_dir: Path, images: _RunImages) -> ExportReport:
    prep = json.loads(onnx_metadata(run.labels, run.preprocessing)["preprocessing"])
    return ExportReport(fmt, run.run_dir, out_dir, run.checkpoint, run.epoch,
                        run.config.model.backbone, run.labels, prep, images.note,
                        0 if images.check is None else int(images.check.shape[0]))


class _Job(NamedTuple):
    """What every format's writer gets: the run, the check set, the images, the options."""

    run: _Run
    check: CheckSet | None
    images: _RunImages
    opset: int | None
    metadata: dict[str, str]
    say: Progress


def _write_onnx(job: _Job, target: Path) -> FormatResult:
    job.say("exporting ONNX")
    run = job.run
    return export_onnx(run.model, target, int(run.preprocessing["crop"]), run.labels,
                       run.preprocessing, job.opset, check=job.check, metadata=job.metadata)


def _write_int8(job: _Job, target: Path, fp32: FormatResult | None = None) -> FormatResult:
    """int8 quantizes an fp32 ONNX file: the bundle's own, else one made in a temp folder."""
    if fp32 is None:
        with tempfile.TemporaryDirectory(prefix="studio-int8-") as tmp:
            job.say("exporting ONNX to quantize")
            return _write_int8(job, target, _write_onnx(job, Path(tmp) / "model.onnx"))
    job.say("quantizing to int8")
    run, images = job.run, job.images
    source = next(f for f in fp32.files if f.suffix == ".onnx")
    result = export_int8(source, target, run.labels, run.preprocessing, check=job.check,
                         calibration=images.calibration, accuracy_images=images.accuracy,
                         accuracy_targets=images.accuracy_targets)
    result.details["fp32_exporter"] = fp32.exporter
    return result


def _write_torchscript(job: _Job, target: Path) -> FormatResult:
    job.say("tracing TorchScript")
    run = job.run
    return export_torchscript(run.model, target, int(run.preprocessing["crop"]), run.labels,
                              run.preprocessing, check=job.check)


def _write_safetensors(job: _Job, target: Path) -> FormatResult:
    job.say("writing safetensors")
    run = job.run
    return export_safetensors(run.model, target, run.labels, run.preprocessing,
                              {"backbone": run.config.model.backbone})


@dataclass(frozen=True)
class ExportFormat:
    """One format a run exports to: its default file name, the suffixes ``--out`` may name a
    file with, and the function that writes and verifies it."""

    name: str
    file_name: str
    suffixes: tuple[str, ...]
    write: Callable[[_Job, Path], FormatResult]
    needs_check: bool = True  # runs the model (safetensors is checked by reading it back)
    int8_images: bool = False  # wants the int8 calibration and accuracy images


REGISTRY: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", "model.onnx", (".onnx",), _write_onnx),
    ExportFormat("int8", "model.int8.onnx", (".onnx",), _write_int8, int8_images=True),
    ExportFormat("torchscript", "model.pt", (".pt", ".pth", ".ts"), _write_torchscript),
    ExportFormat("safetensors", "model.safetensors", (".safetensors",), _write_safetensors,
                 needs_check=False),
)}
FORMATS = (*REGISTRY, "bundle")
FILE_NAMES = {name: spec.file_name for name, spec in REGISTRY.items()}


def _calibrate(run: _Run, report: ExportReport, target_precision: float,
               say: Progress) -> dict[str, str]:
    """The run's metadata, with the temperature and unknown threshold fitted on its validation
    split when it still has one (recorded in the report either way)."""
    meta = _run_meta(run)
    say("fitting the calibration on validation images")
    calibration = fit_run_calibration(run, target_precision)
    if calibration is not None:
        report.calibration = calibration.export_metadata()
        meta["calibration"] = json.dumps(report.calibration)
    return meta


def _single(run: _Run, fmt: str, out_dir: Path, file_name: str | None, opset: int | None,
            say: Progress, target_precision: float) -> ExportReport:
    spec = REGISTRY[fmt]
    say("reading validation images")
    images = _run_images(run, CHECK_IMAGES, ACCURACY_IMAGES if spec.int8_images else 0,
                         CALIBRATION_IMAGES if spec.int8_images else 0)
    report = _new_report(run, fmt, out_dir, images)
    meta = _calibrate(run, report, target_precision, say) if spec.name in ("onnx", "int8") \
        else _run_meta(run)
    check = (make_check_set(run.model, int(run.preprocessing["crop"]), images.check,
                            images.note) if spec.needs_check else None)
    try:
        report.results.append(spec.write(_Job(run, check, images, opset, meta, say),
                                         out_dir / (file_name or spec.file_name)))
    except ExportError as error:
        _fail(report, error)
    _finish(report)
    return report


def _bundle(run: _Run, out_dir: Path, opset: int | None, say: Progress,
            target_precision: float) -> ExportReport:
    say("reading validation images")
    images = _run_images(run, CHECK_IMAGES, ACCURACY_IMAGES, CALIBRATION_IMAGES)
    report = _new_report(run, "bundle", out_dir, images)
    meta = _calibrate(run, report, target_precision, say)
    check = make_check_set(run.model, int(run.preprocessing["crop"]), images.check, images.note)
    job = _Job(run, check, images, opset, meta, say)
    try:
        onnx_result = _write_onnx(job, out_dir / FILE_NAMES["onnx"])
        report.results.append(onnx_result)
        report.results.append(_write_int8(job, out_dir / FILE_NAMES["int8"], onnx_result))
        for name in ("torchscript", "safetensors"):
            report.results.append(REGISTRY[name].write(job, out_dir / FILE_NAMES[name]))
    except ExportError as error:
        _fail(report, error)
    atomic_write_text(out_dir / "config.toml", run.config_text)
    record = read_record(run.run_dir)
    if record is not None:  # how the model was made, for whoever receives the bundle
        atomic_write_text(out_dir / "run.json", json.dumps(record, indent=2,
                                                           ensure_ascii=False) + "\n")
    if report.calibration is not None:
        atomic_write_text(out_dir / "calibration.json",
                          json.dumps(report.calibration, indent=2) + "\n")
    atomic_write_text(out_dir / "predict.py", predict_py())
    atomic_write_text(out_dir / "README.md", model_card(run, report))
    _finish(report)
    return report


def _run_meta(run: _Run) -> dict[str, str]:
    return {"backbone": run.config.model.backbone, "checkpoint": run.checkpoint,
            "epoch": str(run.epoch)}


def _fail(report: ExportReport, error: ExportError) -> None:
    """Write the report of a failed export, then raise with where to find it."""
    if error.result is not None:
        report.results.append(error.result)
    report.report_path = _write_report(report)
    raise ExportError(f"{error}; details are in {report.report_path}", error.result) from error


def _finish(report: ExportReport) -> None:
    report.report_path = _write_report(report)


def _write_report(report: ExportReport) -> Path:
    path = report.out_dir / REPORT_NAME
    atomic_write_text(path, json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    return path
