"""Export a trained model — ONNX, int8 ONNX, TorchScript, safetensors, or a bundle of all — and
prove that every file gives the answers of the PyTorch model it came from.

Verification is always on. Each exported file is run with its own runtime (onnxruntime for
ONNX, ``torch.jit.load`` for TorchScript, ``safetensors.torch.load_file`` for weights) on real
validation images of the run, a single image (batch 1) and a random batch of 7, and compared with
PyTorch: the largest absolute logit difference and top-1 agreement. fp32 files must agree within
``ATOL + RTOL · (the input's largest |logit|)``, and a top-1 disagreement is only allowed where
the two best logits are a near-tie. When a model's own fp32 arithmetic is ill-conditioned (its
fp32 logits are themselves farther than that from the float64 ones), the file is judged against
float64 instead and may not be farther from it than PyTorch fp32 is (see :func:`judge`).
Anything else raises :class:`ExportError` — an export is never silently wrong.

The model-level exporters (``export_onnx``, ``export_torchscript``, ``export_safetensors``,
``export_int8``, ``export_model_onnx``) need no run folder; ``export_run`` and
``export_bundle`` export a run folder written by the trainer and write ``export_report.json``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from studio import __version__
from studio.engine.config import FILE_MODE, ConfigError, RunConfig, atomic_write_text
from studio.engine.data import (
    FolderDataset,
    Preprocessing,
    Sample,
    build_transforms,
    scan_folder,
)
from studio.engine.errors import DatasetError, StudioError
from studio.engine.runs import OpenedRun, open_run, preprocessing_from_json

log = logging.getLogger(__name__)

FORMATS = ("onnx", "int8", "torchscript", "safetensors", "bundle")
ONNX_EXPORTERS = ("dynamo", "torchscript")  # tried in this order
DEFAULT_OPSET = 18  # native to the dynamo exporter; onnxruntime ≥ 1.14, TensorRT ≥ 8.6, OpenVINO
RTOL, ATOL = 1e-3, 1e-4  # fp32 tolerance of exported logits against PyTorch's
EXACT_SLACK = 2.0  # against float64: how much farther than PyTorch's fp32 a file may be
CHECK_IMAGES = 32  # real validation images compared per export
RANDOM_BATCH = 7  # a batch size other than the example's, to prove the batch axis dynamic
ACCURACY_IMAGES = 256  # validation images for the int8 accuracy change
CALIBRATION_IMAGES = 64  # training images for int8 static calibration
# Weights above this many bytes go to an external data file: protobuf cannot serialise a
# message over 2 GiB, and the graph itself needs some room. A module variable so tests can
# exercise the path with a tiny model.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 128 * 1024**2
REPORT_NAME = "export_report.json"

FILE_NAMES = {"onnx": "model.onnx", "int8": "model.int8.onnx", "torchscript": "model.pt",
              "safetensors": "model.safetensors"}

Progress = Callable[[str], None]


class ExportError(StudioError):
    """An export that failed or does not match PyTorch. ``result`` holds what was measured."""

    def __init__(self, message: str, result: FormatResult | None = None) -> None:
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Parity:
    """How closely an exported model's logits follow PyTorch's."""

    max_abs_diff: float
    top1_agreement: float  # fraction of inputs whose top class is the same
    inputs: int  # compared inputs: real images + one single image + the random batch
    images: int  # real images among them
    disagreements: int  # top-1 disagreements where the two best logits are not a near-tie
    tie_disagreements: int  # top-1 disagreements on a near-tie (allowed)
    within_tolerance: bool  # |Δ| ≤ atol + rtol·(the input's largest |logit|) everywhere
    rtol: float
    atol: float
    tolerance_used: float = 0.0  # the largest |Δ| / allowed: ≤ 1 passes
    reference: str = "fp32"  # "fp64": judged against the exact result (see judge)
    max_abs_diff_fp64: float | None = None  # the file's distance from the float64 logits
    pytorch_fp32_error: float | None = None  # PyTorch fp32's own distance from them

    @property
    def ok(self) -> bool:
        return self.within_tolerance and self.disagreements == 0

    def describe(self, judged: bool = True) -> str:
        """``max |Δlogit| 2.1e-06, top-1 agreement 100.0 %`` and, when ``judged`` against the
        fp32 tolerance, why it fails if it does."""
        text = (f"max |Δlogit| {self.max_abs_diff:.2g}, top-1 agreement "
                f"{100 * self.top1_agreement:.1f} %")
        if not judged:
            return text
        if self.reference == "fp64":
            text += (f"; PyTorch's own fp32 result is {self.pytorch_fp32_error:.2g} from the "
                     f"float64 one and the file's {self.max_abs_diff_fp64:.2g}: the model's "
                     f"fp32 arithmetic is ill-conditioned and the file is as exact as PyTorch")
        if not self.within_tolerance:
            text += f" (beyond rtol {self.rtol:g}, atol {self.atol:g})"
        if self.disagreements:
            text += f", {self.disagreements} top-1 disagreement(s) that are not near-ties"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"max_abs_diff": _finite_or_none(self.max_abs_diff),
                "top1_agreement": self.top1_agreement, "inputs_checked": self.inputs,
                "images_checked": self.images, "disagreements": self.disagreements,
                "tie_disagreements": self.tie_disagreements,
                "within_tolerance": self.within_tolerance,
                "tolerance_used": _finite_or_none(self.tolerance_used), "rtol": self.rtol,
                "atol": self.atol, "reference": self.reference,
                "max_abs_diff_fp64": self.max_abs_diff_fp64,
                "pytorch_fp32_error": self.pytorch_fp32_error}


@dataclass
class FormatResult:
    """One exported format: its files, how it was made and how it was verified."""

    format: str
    files: list[Path] = field(default_factory=list)
    exporter: str | None = None
    opset: int | None = None
    parity: Parity | None = None
    verified: bool = False
    message: str = ""  # one line on how it was verified, or why it failed
    attempts: list[dict[str, str]] = field(default_factory=list)  # exporters tried and outcome
    details: dict[str, Any] = field(default_factory=dict)  # format-specific figures (int8)
    seconds: float = 0.0

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files if f.is_file())

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        def name(path: Path) -> str:
            if relative_to is not None:
                with contextlib.suppress(ValueError):
                    return str(path.relative_to(relative_to))
            return str(path)

        parity = self.parity.to_json() if self.parity is not None else {
            "max_abs_diff": None, "top1_agreement": None, "images_checked": 0}
        return {"format": self.format, "exporter": self.exporter, "opset": self.opset,
                "files": [{"name": name(f), "bytes": f.stat().st_size if f.is_file() else None}
                          for f in self.files],
                **parity, "verified": self.verified, "message": self.message,
                "attempts": self.attempts, **self.details, "seconds": round(self.seconds, 2)}


@dataclass
class ExportReport:
    """What ``export_run``/``export_bundle`` did; written as ``export_report.json``."""

    format: str
    run_dir: Path
    out_dir: Path
    checkpoint: str
    epoch: int | None
    backbone: str
    labels: list[str]
    preprocessing: dict[str, Any]
    dataset_note: str  # where the real images came from, or why there were none
    images_checked: int
    results: list[FormatResult] = field(default_factory=list)
    report_path: Path | None = None

    @property
    def verified(self) -> bool:
        return bool(self.results) and all(r.verified for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"studio_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "format": self.format, "verified": self.verified, "run_dir": str(self.run_dir),
                "checkpoint": self.checkpoint, "epoch": self.epoch, "backbone": self.backbone,
                "labels": self.labels, "preprocessing": self.preprocessing,
                "dataset": self.dataset_note, "images_checked": self.images_checked,
                "exports": [r.to_json(self.out_dir) for r in self.results]}


# ---------------------------------------------------------------------------------------------
# Checking an export against PyTorch


@dataclass
class CheckSet:
    """Inputs an export is run on, with PyTorch's logits for them.

    Batches: the random batch (7), one image alone (batch 1) and the real images (up to 32), so a
    file whose batch axis is not dynamic fails here rather than in a user's hands.
    """

    batches: list[tuple[str, torch.Tensor]]
    reference: list[np.ndarray]
    images: int  # real images in the "images" batch
    note: str  # where the real images came from, or why there are none
    model: nn.Module | None = field(default=None, repr=False)
    _exact: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def inputs(self) -> int:
        return sum(batch.shape[0] for _, batch in self.batches)

    def exact(self) -> list[np.ndarray] | None:
        """The model's logits computed in float64 (once, on demand), or None if it cannot be."""
        if self._exact is None and self.model is not None:
            try:
                exact_model = copy.deepcopy(self.model).double().eval()
                with torch.no_grad():
                    self._exact = [exact_model(batch.double()).detach().numpy()
                                   for _, batch in self.batches]
            except (RuntimeError, TypeError, NotImplementedError, MemoryError):
                log.info("no float64 reference for %s", type(self.model).__name__,
                         exc_info=True)
                self.model = None  # do not try again
        return self._exact


def make_check_set(model: nn.Module, input_size: int, images: torch.Tensor | None = None,
                   note: str = "") -> CheckSet:
    """Check inputs for ``model``: real ``images`` (N, 3, S, S, normalised) if given, one image
    alone and a seeded random batch; PyTorch's logits are computed once here."""
    generator = torch.Generator().manual_seed(0)
    random_batch = torch.randn(RANDOM_BATCH, 3, input_size, input_size, generator=generator)
    batches: list[tuple[str, torch.Tensor]] = [("random", random_batch)]
    if images is not None and images.shape[0] > 0:
        batches += [("single", images[:1].contiguous()), ("images", images.contiguous())]
    else:
        batches.append(("single", random_batch[:1].clone()))
        note = note or "no validation images were given; verified on a random batch only"
    model.eval()
    reference = [_torch_logits(model, batch) for _, batch in batches]
    count = 0 if images is None else int(images.shape[0])
    return CheckSet(batches, reference, count, note, model)


@torch.no_grad()
def _torch_logits(model: nn.Module, batch: torch.Tensor) -> np.ndarray:
    output = model(batch)
    if not isinstance(output, torch.Tensor):
        raise ExportError(f"{type(model).__name__} returns {type(output).__name__}, not a "
                          f"tensor of logits, so it cannot be exported")
    return output.detach().float().cpu().numpy()


def compare(reference: Sequence[np.ndarray], exported: Sequence[np.ndarray], images: int = 0,
            rtol: float = RTOL, atol: float = ATOL) -> Parity:
    """Logit parity: every logit within ``atol + rtol · s``, where ``s`` is the largest
    |logit| PyTorch gives that input. fp32 rounding error grows with the activations a logit is
    computed from, which its input's largest logit reflects; a logit that happens to be near
    zero does not make the arithmetic more exact, so it gets no tighter bound than its
    neighbours. A top-1 disagreement counts against an export unless the two best reference
    logits are a near-tie: closer than the tolerance lets two logits move."""
    ref = np.concatenate([np.asarray(r, dtype=np.float64) for r in reference])
    out = np.concatenate([np.asarray(e, dtype=np.float64) for e in exported])
    if ref.shape != out.shape:
        raise ExportError(f"the exported model returns logits of shape {out.shape}, PyTorch "
                          f"{ref.shape}")
    finite = bool(np.isfinite(out).all())
    diff = np.abs(ref - out)
    allowed = atol + rtol * np.abs(ref).max(axis=1, keepdims=True)
    max_diff = float(diff.max()) if finite and diff.size else math.inf
    used = float((diff / allowed).max()) if finite and diff.size else math.inf
    within = finite and used <= 1.0
    agree = ref.argmax(axis=1) == out.argmax(axis=1)
    ordered = np.sort(ref, axis=1)
    gap = ordered[:, -1] - ordered[:, -2] if ref.shape[1] > 1 else np.full(len(ref), np.inf)
    tie = gap <= 2 * allowed[:, 0]
    disagreements = int((~agree & ~tie).sum())
    return Parity(max_abs_diff=max_diff, top1_agreement=float(agree.mean()) if agree.size else 1.0,
                  inputs=int(ref.shape[0]), images=images, disagreements=disagreements,
                  tie_disagreements=int((~agree & tie).sum()), within_tolerance=within,
                  rtol=rtol, atol=atol, tolerance_used=used)


def compare_exact(reference: Sequence[np.ndarray], exact: Sequence[np.ndarray],
                  exported: Sequence[np.ndarray], images: int = 0, rtol: float = RTOL,
                  atol: float = ATOL) -> Parity:
    """Parity against the float64 result, for a model whose fp32 arithmetic is itself far from
    exact (activations that grow large inside the network: EfficientNet-B4 and up at random
    initialisation). On each input the file may be as far from the float64 logits as the
    tolerance allows, or up to twice as far as PyTorch's own fp32 logits are: two fp32
    computations that add in different orders err by similar amounts, while a wrong translation
    is off by far more."""
    ref, ex, out = (np.concatenate([np.asarray(a, dtype=np.float64) for a in arrays])
                    for arrays in (reference, exact, exported))
    if ex.shape != out.shape:
        raise ExportError(f"the exported model returns logits of shape {out.shape}, PyTorch "
                          f"{ex.shape}")
    finite = bool(np.isfinite(out).all())
    own = np.abs(ref - ex).max(axis=1)
    bound = np.maximum(atol + rtol * np.abs(ex).max(axis=1), EXACT_SLACK * own)
    error = np.abs(out - ex).max(axis=1)
    used = float((error / bound).max()) if finite and error.size else math.inf
    agree = ex.argmax(axis=1) == out.argmax(axis=1)
    ordered = np.sort(ex, axis=1)
    gap = ordered[:, -1] - ordered[:, -2] if ex.shape[1] > 1 else np.full(len(ex), np.inf)
    tie = gap <= 2 * bound
    return Parity(max_abs_diff=float(np.abs(out - ref).max()) if finite else math.inf,
                  top1_agreement=float((ref.argmax(axis=1) == out.argmax(axis=1)).mean()),
                  inputs=int(ex.shape[0]), images=images,
                  disagreements=int((~agree & ~tie).sum()),
                  tie_disagreements=int((~agree & tie).sum()), within_tolerance=used <= 1.0,
                  rtol=rtol, atol=atol, tolerance_used=used, reference="fp64",
                  max_abs_diff_fp64=float(error.max()) if finite else None,
                  pytorch_fp32_error=float(own.max()))


def judge(check: CheckSet, exported: Sequence[np.ndarray]) -> Parity:
    """Compare with PyTorch's fp32 logits; if that fails the tolerance, ask whether PyTorch's
    fp32 rounding is the larger error: a file at least as close to the float64 result as
    PyTorch's fp32 is a faithful export (see compare_exact). A wrong translation is far from
    both."""
    parity = compare(check.reference, exported, check.images)
    if parity.ok or not math.isfinite(parity.max_abs_diff):
        return parity
    exact = check.exact()
    if exact is None:
        return parity
    second = compare_exact(check.reference, exact, exported, check.images)
    return second if second.ok else parity


def run_onnx(path: str | os.PathLike[str], batches: Sequence[torch.Tensor | np.ndarray]
             ) -> list[np.ndarray]:
    """Logits of an ONNX file under onnxruntime (CPU), one run per batch."""
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return [np.asarray(session.run(["logits"], {"input": _numpy(batch)})[0])
                for batch in batches]
    except Exception as error:  # onnxruntime raises its own (Fail, InvalidGraph, …) types
        raise ExportError(f"onnxruntime cannot run {Path(path).name} "
                          f"({_first_line(error)})") from error


def run_torchscript(path: str | os.PathLike[str], batches: Sequence[torch.Tensor]
                    ) -> list[np.ndarray]:
    """Logits of a TorchScript file loaded with plain ``torch.jit.load``."""
    try:
        with _quiet():
            module = torch.jit.load(str(path), map_location="cpu")
        module.eval()
        with torch.no_grad():
            return [module(batch).float().numpy() for batch in batches]
    except Exception as error:  # a TorchScript interpreter error has many types
        raise ExportError(f"torch.jit.load cannot run {Path(path).name} "
                          f"({_first_line(error)})") from error


def _numpy(batch: torch.Tensor | np.ndarray) -> np.ndarray:
    array = batch.numpy() if isinstance(batch, torch.Tensor) else batch
    return np.ascontiguousarray(array, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# ONNX


def onnx_metadata(labels: Sequence[str], preprocessing: dict[str, Any] | Preprocessing,
                  extra: dict[str, str] | None = None) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: labels and preprocessing as JSON text."""
    prep = preprocessing.to_json() if isinstance(preprocessing, Preprocessing) \
        else dict(preprocessing)
    prep.setdefault("channel_order", "RGB")
    prep.setdefault("layout", "NCHW")
    missing = {"resize", "crop", "mean", "std"} - set(prep)
    if missing:
        raise ExportError(f"the preprocessing to record lacks {', '.join(sorted(missing))}")
    return {"labels": json.dumps(list(labels), ensure_ascii=False),
            "preprocessing": json.dumps(prep, ensure_ascii=False),
            "producer": f"Finetune Studio {__version__}", **(extra or {})}


def state_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers, as they will be stored."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def export_onnx(model: nn.Module, path: str | os.PathLike[str], input_size: int,
                labels: Sequence[str], preprocessing: dict[str, Any] | Preprocessing,
                opset: int | None = None, *, check: CheckSet | None = None,
                exporters: Sequence[str] = ONNX_EXPORTERS,
                metadata: dict[str, str] | None = None) -> FormatResult:
    """Write ``model`` as ONNX (input ``input``: float32 NCHW normalised, dynamic batch; output
    ``logits``) with labels and preprocessing in ``metadata_props``, and verify it.

    The dynamo exporter is tried first; when it fails or its file does not match PyTorch the
    TorchScript-based exporter is tried. The result says which one was used. Raises
    ExportError when no exporter gives a verified file; nothing is left at ``path`` then.
    """
    path = Path(path)
    started = time.monotonic()
    model.eval()
    check = check or make_check_set(model, input_size)
    meta = onnx_metadata(labels, preprocessing, metadata)
    external = state_bytes(model) > EXTERNAL_DATA_THRESHOLD
    requested = opset or DEFAULT_OPSET
    result = FormatResult("onnx")
    reasons = []
    path.parent.mkdir(parents=True, exist_ok=True)
    for exporter in exporters:
        with _scratch(path.parent) as scratch:
            target = scratch / path.name
            try:
                if exporter == "dynamo":
                    _onnx_dynamo(model, target, input_size, requested, meta, external)
                elif exporter == "torchscript":
                    _onnx_torchscript(model, target, input_size, requested, meta, external,
                                      scratch)
                else:
                    raise ValueError(f"unknown ONNX exporter {exporter!r}")
                written = _onnx_opset(target)
                if written != requested:
                    raise ExportError(f"it wrote opset {written}, not the requested {requested}")
                parity = judge(check, run_onnx(target, [b for _, b in check.batches]))
            except Exception as error:  # any exporter failure means: try the next one
                log.info("ONNX export with %s failed", exporter, exc_info=True)
                reason = _first_line(error)
                result.attempts.append({"exporter": exporter, "outcome": f"failed: {reason}"})
                reasons.append(f"the {exporter} exporter failed ({reason})")
                continue
            if not parity.ok:
                result.attempts.append({"exporter": exporter,
                                        "outcome": f"mismatch: {parity.describe()}"})
                reasons.append(f"the {exporter} exporter's file does not match PyTorch "
                               f"({parity.describe()})")
                result.parity = parity
                continue
            result.attempts.append({"exporter": exporter, "outcome": "verified"})
            result.files = _install(scratch, path.parent)
        if not external:  # a data file left by an earlier, larger export would mislead
            (path.parent / f"{path.name}.data").unlink(missing_ok=True)
        result.exporter, result.opset, result.parity, result.verified = (
            exporter, requested, parity, True)
        result.message = f"{_check_words(check)}: {parity.describe()}"
        result.details["external_data"] = external
        result.seconds = time.monotonic() - started
        return result
    result.seconds = time.monotonic() - started
    result.message = "; ".join(reasons)
    raise ExportError(f"the ONNX export of {type(model).__name__} failed: {result.message}",
                      result)


def export_model_onnx(model: nn.Module, path: str | os.PathLike[str], input_size: int,
                      labels: Sequence[str] | None = None,
                      preprocessing: dict[str, Any] | Preprocessing | None = None,
                      opset: int | None = None, **options: Any) -> FormatResult:
    """ONNX export of any classifier, no run folder needed: verified on a random batch (labels
    ``class_0…`` and ImageNet preprocessing at ``input_size`` unless given)."""
    model.eval()
    if labels is None:
        with torch.no_grad():
            classes = _torch_logits(model, torch.zeros(1, 3, input_size, input_size)).shape[1]
        labels = [f"class_{i}" for i in range(classes)]
    prep = preprocessing if preprocessing is not None else Preprocessing().at_size(input_size)
    return export_onnx(model, path, input_size, labels, prep, opset, **options)


def _onnx_dynamo(model: nn.Module, target: Path, input_size: int, opset: int,
                 meta: dict[str, str], external: bool) -> None:
    example = torch.randn(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1)
    with _quiet():
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["input"],
                                    output_names=["logits"], dynamic_shapes=({0: batch},),
                                    opset_version=opset, verbose=False)
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        program.model.metadata_props.update(meta)
        program.save(str(target), external_data=external)


def _onnx_torchscript(model: nn.Module, target: Path, input_size: int, opset: int,
                      meta: dict[str, str], external: bool, scratch: Path) -> None:
    example = torch.randn(2, 3, input_size, input_size)
    raw_dir = scratch / "raw"
    raw_dir.mkdir()
    raw = raw_dir / target.name
    with _quiet(), _native_stdout_to_log():
        torch.onnx.export(model, (example,), str(raw), dynamo=False, input_names=["input"],
                          output_names=["logits"], opset_version=opset,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    _rewrite_onnx(raw, target, meta, external)
    shutil.rmtree(raw_dir)


def _rewrite_onnx(source: Path, target: Path, meta: dict[str, str], external: bool) -> None:
    """Save ``source`` as ``target`` with ``meta`` in metadata_props, weights inside the file or
    in ``<target>.data`` beside it."""
    import onnx

    proto = onnx.load(str(source), load_external_data=True)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    for key, value in [*kept, *meta.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    if external:
        onnx.save_model(proto, str(target), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=f"{target.name}.data",
                        size_threshold=1024)  # small constants stay inline for onnxruntime
    else:
        onnx.save_model(proto, str(target))


def _onnx_opset(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``labels`` and ``preprocessing`` (decoded) and any other metadata_props of a file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    meta: dict[str, Any] = {p.key: p.value for p in proto.metadata_props}
    for key in ("labels", "preprocessing"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta


# ---------------------------------------------------------------------------------------------
# int8


def export_int8(onnx_path: str | os.PathLike[str], path: str | os.PathLike[str],
                labels: Sequence[str], preprocessing: dict[str, Any] | Preprocessing, *,
                check: CheckSet, calibration: torch.Tensor | None = None,
                accuracy_images: torch.Tensor | None = None,
                accuracy_targets: torch.Tensor | None = None) -> FormatResult:
    """Quantize a verified fp32 ONNX file to int8 with onnxruntime: static QDQ (per-channel
    int8 weights, uint8 activations) calibrated on ``calibration`` images when there are
    some, dynamic otherwise. Verified means it loads, runs batch 1 and 7 and gives finite logits
    of the right shape; int8 is not held to the fp32 tolerance, so its agreement with PyTorch and
    the change in validation accuracy are reported instead."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    source, path = Path(onnx_path), Path(path)
    started = time.monotonic()
    result = FormatResult("int8")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = source.with_name(f"{source.name}.data")
    large = source.stat().st_size + (data.stat().st_size if data.is_file() else 0) \
        > EXTERNAL_DATA_THRESHOLD  # its intermediate files need external data too
    with _scratch(path.parent) as scratch:
        prepared = scratch / "prepared.onnx"
        try:
            with _quiet():
                quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True,
                                  save_as_external_data=large, all_tensors_to_one_file=True)
        except Exception:  # pre-processing is an optimisation; quantize the file as it is
            log.info("int8 pre-processing failed; quantizing the original", exc_info=True)
            prepared = source
        quantized = scratch / "quantized.onnx"
        try:
            with _quiet():
                if calibration is not None and calibration.shape[0] > 0:
                    method = "static QDQ, per-channel int8 weights, uint8 activations"

                    class _Reader(CalibrationDataReader):
                        def __init__(self, images: torch.Tensor) -> None:
                            self._batches = iter(images.split(1))

                        def get_next(self) -> dict[str, np.ndarray] | None:
                            batch = next(self._batches, None)
                            return None if batch is None else {"input": _numpy(batch)}

                    quantize_static(str(prepared), str(quantized), _Reader(calibration),
                                    quant_format=QuantFormat.QDQ, per_channel=True,
                                    activation_type=QuantType.QUInt8,
                                    weight_type=QuantType.QInt8,
                                    use_external_data_format=large)
                else:
                    method = "dynamic, uint8 weights"
                    quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QUInt8,
                                     use_external_data_format=large)
        except Exception as error:  # onnxruntime's quantizer raises many kinds
            result.message = f"onnxruntime could not quantize the model ({_first_line(error)})"
            result.seconds = time.monotonic() - started
            raise ExportError(f"the int8 export failed: {result.message}", result) from error
        target = scratch / path.name
        _rewrite_onnx(quantized, target, onnx_metadata(labels, preprocessing,
                                                       {"quantization": method}), large)
        for leftover in scratch.iterdir():  # keep only the int8 model (and its data file)
            if leftover.name not in (target.name, f"{target.name}.data"):
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
        parity = compare(check.reference, run_onnx(target, [b for _, b in check.batches]),
                         check.images)
        finite = math.isfinite(parity.max_abs_diff)
        int8_data = target.with_name(f"{target.name}.data")
        details: dict[str, Any] = {"method": method,
                                   "bytes_fp32": source.stat().st_size
                                   + (data.stat().st_size if data.is_file() else 0),
                                   "bytes_int8": target.stat().st_size
                                   + (int8_data.stat().st_size if int8_data.is_file() else 0),
                                   "calibration_images": 0 if calibration is None
                                   else int(calibration.shape[0])}
        if accuracy_images is not None and accuracy_targets is not None \
                and accuracy_images.shape[0] > 0:
            chunks = list(accuracy_images.split(32))
            fp32 = np.concatenate(run_onnx(source, chunks)).argmax(1)
            int8 = np.concatenate(run_onnx(target, chunks)).argmax(1)
            truth = accuracy_targets.numpy()
            details |= {"accuracy_images": int(truth.shape[0]),
                        "accuracy_fp32": float((fp32 == truth).mean()),
                        "accuracy_int8": float((int8 == truth).mean())}
            details["accuracy_change"] = details["accuracy_int8"] - details["accuracy_fp32"]
        result.parity, result.details = parity, details
        result.exporter, result.opset = "onnxruntime.quantization", _onnx_opset(target)
        if not finite:
            result.message = "the int8 model gives non-finite logits"
            result.seconds = time.monotonic() - started
            raise ExportError(f"the int8 export failed: {result.message}", result)
        result.files = _install(scratch, path.parent)
    result.verified = True
    ratio = details["bytes_int8"] / max(1, details["bytes_fp32"])
    words = (f"{_check_words(check)}: {parity.describe(judged=False)}; size "
             f"{100 * ratio:.0f} % of fp32")
    if "accuracy_change" in details:
        words += (f"; accuracy on {details['accuracy_images']} validation images "
                  f"{100 * details['accuracy_fp32']:.1f} % → {100 * details['accuracy_int8']:.1f}"
                  f" % ({100 * details['accuracy_change']:+.1f} points)")
    else:
        words += "; no validation images, so the accuracy change is unknown"
    result.message = words
    result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------------------------
# TorchScript and safetensors


def export_torchscript(model: nn.Module, path: str | os.PathLike[str], input_size: int,
                       labels: Sequence[str], preprocessing: dict[str, Any] | Preprocessing, *,
                       check: CheckSet | None = None) -> FormatResult:
    """A traced, trace-checked TorchScript file carrying ``labels.json`` and
    ``preprocessing.json`` as extra files; loadable with plain ``torch.jit.load``."""
    path = Path(path)
    started = time.monotonic()
    model.eval()
    check = check or make_check_set(model, input_size)
    meta = onnx_metadata(labels, preprocessing)
    extra = {"labels.json": meta["labels"], "preprocessing.json": meta["preprocessing"]}
    result = FormatResult("torchscript", exporter="torch.jit.trace")
    generator = torch.Generator().manual_seed(1)
    example = torch.randn(2, 3, input_size, input_size, generator=generator)
    other = torch.randn(3, 3, input_size, input_size, generator=generator)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _scratch(path.parent) as scratch:
        target = scratch / path.name
        try:
            with _quiet(), torch.no_grad():
                traced = torch.jit.trace(model, example, check_trace=True,
                                         check_inputs=[(other,)])
                torch.jit.save(traced, str(target), _extra_files=extra)
        except Exception as error:  # tracing raises TracingCheckError, RuntimeError, …
            result.message = f"tracing failed ({_first_line(error)})"
            result.seconds = time.monotonic() - started
            raise ExportError(f"the TorchScript export of {type(model).__name__} failed: "
                              f"{result.message}", result) from error
        parity = judge(check, run_torchscript(target, [b for _, b in check.batches]))
        result.parity = parity
        if not parity.ok:
            result.message = f"the traced model does not match PyTorch ({parity.describe()})"
            result.seconds = time.monotonic() - started
            raise ExportError(f"the TorchScript export of {type(model).__name__} failed "
                              f"verification: {result.message}", result)
        result.files = _install(scratch, path.parent)
    result.verified = True
    result.message = f"{_check_words(check)}: {parity.describe()}"
    result.seconds = time.monotonic() - started
    return result


def read_torchscript_extras(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The labels and preprocessing stored inside a TorchScript export."""
    extra = {"labels.json": "", "preprocessing.json": ""}
    with _quiet():
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return {key.removesuffix(".json"): json.loads(value) for key, value in extra.items()}


def export_safetensors(model: nn.Module, path: str | os.PathLike[str], labels: Sequence[str],
                       preprocessing: dict[str, Any] | Preprocessing,
                       metadata: dict[str, str] | None = None) -> FormatResult:
    """The state dict as safetensors (labels and preprocessing also in its header), with
    ``labels.json`` and ``preprocessing.json`` beside. Verified by reading the file back: every
    tensor bit-identical to the model's."""
    from safetensors.torch import load_file, save_file

    path = Path(path)
    started = time.monotonic()
    meta = onnx_metadata(labels, preprocessing, metadata)
    state = {name: tensor.detach().cpu().contiguous().clone()
             for name, tensor in model.state_dict().items()}
    result = FormatResult("safetensors", exporter="safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _scratch(path.parent) as scratch:
        target = scratch / path.name
        save_file(state, str(target), metadata=meta)
        os.chmod(target, FILE_MODE)
        _write_json(scratch / "labels.json", list(labels))
        _write_json(scratch / "preprocessing.json", json.loads(meta["preprocessing"]))
        loaded = load_file(str(target), device="cpu")
        differ = sorted(set(loaded) ^ set(state))
        differ += [name for name in state if name in loaded
                   and (loaded[name].dtype != state[name].dtype
                        or not torch.equal(loaded[name], state[name]))]
        if differ:
            result.message = f"{len(differ)} tensors differ after reading back (e.g. {differ[0]})"
            raise ExportError(f"the safetensors export failed verification: {result.message}",
                              result)
        result.files = _install(scratch, path.parent)
    result.parity = Parity(0.0, 1.0, 0, 0, 0, 0, True, RTOL, ATOL)
    result.verified = True
    result.message = f"read back {len(state)} tensors, all bit-identical"
    result.details["tensors"] = len(state)
    result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------------------------
# Runs


_Run = OpenedRun


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
               opset: int | None = None, progress: Progress | None = None) -> ExportReport:
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
    if fmt == "bundle":
        return _bundle(run, out_dir, opset, say)
    return _single(run, fmt, out_dir, file_name, opset, say)


def export_bundle(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                  checkpoint: str = "best", opset: int | None = None,
                  progress: Progress | None = None) -> ExportReport:
    """Every format in one folder, with a model card (README.md) and a ``predict.py`` that
    classifies an image file with onnxruntime, Pillow and numpy alone."""
    return export_run(run_dir, "bundle", out, checkpoint, opset, progress)


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
    suffix = {"onnx": ".onnx", "int8": ".onnx", "torchscript": ".pt",
              "safetensors": ".safetensors"}.get(fmt)
    if suffix is not None and out.suffix.lower() in (suffix, ".pth", ".ts") and not out.is_dir():
        return out.parent, out.name
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a folder (or a {suffix or ''} file name "
                          f"for a single format)")
    return out, None


def _new_report(run: _Run, fmt: str, out_dir: Path, images: _RunImages) -> ExportReport:
    prep = json.loads(onnx_metadata(run.labels, run.preprocessing)["preprocessing"])
    return ExportReport(fmt, run.run_dir, out_dir, run.checkpoint, run.epoch,
                        run.config.model.backbone, run.labels, prep, images.note,
                        0 if images.check is None else int(images.check.shape[0]))


def _single(run: _Run, fmt: str, out_dir: Path, file_name: str | None, opset: int | None,
            say: Progress) -> ExportReport:
    say("reading validation images")
    images = _run_images(run, CHECK_IMAGES, ACCURACY_IMAGES if fmt == "int8" else 0,
                         CALIBRATION_IMAGES if fmt == "int8" else 0)
    report = _new_report(run, fmt, out_dir, images)
    name = file_name or FILE_NAMES[fmt]
    size = int(run.preprocessing["crop"])
    try:
        if fmt == "safetensors":
            say("writing safetensors")
            report.results.append(export_safetensors(
                run.model, out_dir / name, run.labels, run.preprocessing,
                {"backbone": run.config.model.backbone}))
        else:
            check = make_check_set(run.model, size, images.check, images.note)
            if fmt == "onnx":
                say("exporting ONNX")
                report.results.append(export_onnx(run.model, out_dir / name, size, run.labels,
                                                  run.preprocessing, opset, check=check,
                                                  metadata=_run_meta(run)))
            elif fmt == "torchscript":
                say("tracing TorchScript")
                report.results.append(export_torchscript(run.model, out_dir / name, size,
                                                         run.labels, run.preprocessing,
                                                         check=check))
            else:
                with tempfile.TemporaryDirectory(prefix="studio-int8-") as tmp:
                    say("exporting ONNX to quantize")
                    fp32 = export_onnx(run.model, Path(tmp) / "model.onnx", size, run.labels,
                                       run.preprocessing, opset, check=check,
                                       metadata=_run_meta(run))
                    say("quantizing to int8")
                    report.results.append(_int8(run, fp32, out_dir / name, check, images))
    except ExportError as error:
        _fail(report, error)
    _finish(report)
    return report


def _int8(run: _Run, fp32: FormatResult, target: Path, check: CheckSet,
          images: _RunImages) -> FormatResult:
    source = next(f for f in fp32.files if f.suffix == ".onnx")
    result = export_int8(source, target, run.labels, run.preprocessing, check=check,
                         calibration=images.calibration, accuracy_images=images.accuracy,
                         accuracy_targets=images.accuracy_targets)
    result.details["fp32_exporter"] = fp32.exporter
    return result


def _bundle(run: _Run, out_dir: Path, opset: int | None, say: Progress) -> ExportReport:
    say("reading validation images")
    images = _run_images(run, CHECK_IMAGES, ACCURACY_IMAGES, CALIBRATION_IMAGES)
    report = _new_report(run, "bundle", out_dir, images)
    size = int(run.preprocessing["crop"])
    check = make_check_set(run.model, size, images.check, images.note)
    try:
        say("exporting ONNX")
        onnx_result = export_onnx(run.model, out_dir / FILE_NAMES["onnx"], size, run.labels,
                                  run.preprocessing, opset, check=check, metadata=_run_meta(run))
        report.results.append(onnx_result)
        say("quantizing to int8")
        report.results.append(_int8(run, onnx_result, out_dir / FILE_NAMES["int8"], check,
                                    images))
        say("tracing TorchScript")
        report.results.append(export_torchscript(run.model, out_dir / FILE_NAMES["torchscript"],
                                                 size, run.labels, run.preprocessing,
                                                 check=check))
        say("writing safetensors")
        report.results.append(export_safetensors(
            run.model, out_dir / FILE_NAMES["safetensors"], run.labels, run.preprocessing,
            {"backbone": run.config.model.backbone}))
    except ExportError as error:
        _fail(report, error)
    atomic_write_text(out_dir / "config.toml", run.config_text)
    atomic_write_text(out_dir / "predict.py", PREDICT_PY)
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


# ---------------------------------------------------------------------------------------------
# The bundle's model card and predict.py


def _best_epoch_metrics(run: _Run) -> dict[str, Any] | None:
    """The metrics.jsonl line of the best epoch, if the run folder still has it."""
    epoch = run.best.get("epoch")
    path = run.run_dir / "metrics.jsonl"
    if epoch is None or not path.is_file():
        return None
    found = None
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("event") == "epoch" and record.get("epoch") == epoch:
                found = record  # a resumed run may repeat an epoch; the last one counts
    return found


def model_card(run: _Run, report: ExportReport) -> str:
    """A short README.md: what the model is, how it was trained, how well, how it was checked."""
    cfg = run.config
    prep = report.preprocessing
    best = run.best
    lines = [f"# {cfg.model.backbone} fine-tuned on {len(run.labels)} classes", "",
             f"Exported by Finetune Studio {__version__} on {time.strftime('%Y-%m-%d')} from the "
             f"{run.checkpoint} checkpoint (epoch {run.epoch}) of `{run.run_dir}`.", "",
             "## Model", "",
             f"- Backbone: `{cfg.model.backbone}` (starting weights: `{cfg.model.weights}`), "
             f"{cfg.model.head.kind} head",
             f"- Input: float32 NCHW, RGB, resize the short side to {prep['resize']} "
             f"({prep.get('interpolation', 'bilinear')}), centre-crop {prep['crop']}, scale to "
             f"0–1, normalise with mean {_floats(prep['mean'])} and std {_floats(prep['std'])}",
             "- Output: `logits`, one per class in this order:", ""]
    lines += [f"  {i}. {name}" for i, name in enumerate(run.labels)]
    lines += ["", "## Training", ""]
    metrics = _best_epoch_metrics(run)
    if best.get("metric") is not None:
        lines.append(f"- Best epoch {best.get('epoch')}: {cfg.train.monitor} "
                     f"{best['metric']:.4f}")
    if metrics:
        shown = [f"{key} {metrics[key]:.4f}" for key in ("train_loss", "train_acc", "val_loss",
                                                          "val_acc")
                 if isinstance(metrics.get(key), int | float)]
        lines.append(f"- At that epoch: {', '.join(shown)}")
    if report.images_checked:
        inputs = (f"{report.dataset_note}, one image alone and a random batch of "
                  f"{RANDOM_BATCH}")
    else:
        inputs = f"one input alone and a random batch of {RANDOM_BATCH} ({report.dataset_note})"
    lines += [f"- {cfg.train.epochs} epochs planned, batch {cfg.train.batch_size}, "
              f"{cfg.optim.optimizer} at lr {cfg.optim.lr:g}, {cfg.optim.schedule} schedule, "
              f"augmentation {cfg.data.augment}, seed {cfg.train.seed}",
              "- The full training configuration is `config.toml`.", "",
              "## Files and verification", "",
              f"Each file was run with its own runtime and compared with PyTorch on {inputs}; "
              f"fp32 tolerance rtol {RTOL:g}, atol {ATOL:g}.", "",
              "| format | file | size | made with | max abs logit diff | top-1 agreement | "
              "verified |", "|---|---|---|---|---|---|---|"]
    for result in report.results:
        parity = result.parity
        main_file = result.files[0].name if result.files else "-"
        exporter = result.exporter or "-"
        if result.format == "onnx" and result.exporter:
            exporter = f"{result.exporter} exporter, opset {result.opset}"
        lines.append(f"| {result.format} | `{main_file}` | {_size(result.size_bytes)} | "
                     f"{exporter} | "
                     f"{'-' if parity is None else f'{parity.max_abs_diff:.2g}'} | "
                     f"{'-' if parity is None else f'{100 * parity.top1_agreement:.1f} %'} | "
                     f"{'yes' if result.verified else 'NO'} |")
    int8 = next((r for r in report.results if r.format == "int8"), None)
    if int8 is not None:
        lines += ["", f"int8: {int8.message}."]
    lines += ["", "## Use", "", "```bash", "python predict.py IMAGE.jpg   # needs onnxruntime, "
              "pillow, numpy", "```", "", "```python",
              "import onnxruntime as ort",
              "session = ort.InferenceSession(\"model.onnx\")",
              "meta = session.get_modelmeta().custom_metadata_map  # labels, preprocessing (JSON)",
              "logits = session.run([\"logits\"], {\"input\": batch})[0]  # batch: N×3×H×W",
              "", "import torch",
              "model = torch.jit.load(\"model.pt\")  # TorchScript, no Finetune Studio needed",
              "```", ""]
    return "\n".join(lines)


def _floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


PREDICT_PY = '''\
#!/usr/bin/env python3
"""Classify image files with model.onnx: onnxruntime, Pillow and numpy only.

    python predict.py IMAGE [IMAGE ...] [--model model.onnx] [--top 3] [--json]

The class names and the preprocessing (resize the short side, centre-crop, scale to 0-1,
normalise, RGB, NCHW) are read from the model's metadata, as Finetune Studio wrote them.
"""

import argparse
import json
import os

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, as in training
MAX_ASPECT = 4.0  # more elongated images are padded to this aspect first, as in training
FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
           "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


def load_rgb(path):
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        array = array / 257.0 if array.max(initial=0) > 255 else array
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("P", "PA", "LA", "La", "RGBa") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def pad_to_aspect(image):
    width, height = image.size
    if max(width, height) <= MAX_ASPECT * min(width, height):
        return image
    if width > height:
        size = (width, int(np.ceil(width / MAX_ASPECT)))
    else:
        size = (int(np.ceil(height / MAX_ASPECT)), height)
    canvas = Image.new("RGB", size, BACKGROUND)
    canvas.paste(image, ((size[0] - width) // 2, (size[1] - height) // 2))
    return canvas


def preprocess(image, prep):
    """Resize the short side to prep["resize"], centre-crop prep["crop"], normalise: 1x3xHxW."""
    image = pad_to_aspect(image)
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = prep["resize"], int(prep["resize"] * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    if size != image.size:
        image = image.resize(size, FILTERS.get(prep.get("interpolation"), Image.BILINEAR))
    crop = prep["crop"]
    top = int(round((size[1] - crop) / 2.0))
    left = int(round((size[0] - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(prep["mean"], np.float32)) / np.asarray(prep["std"], np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None], dtype=np.float32)


def main():
    parser = argparse.ArgumentParser(description="Classify images with an exported model.")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--model", default=os.path.join(HERE, "model.onnx"))
    parser.add_argument("--top", type=int, default=3, help="how many classes to show")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    args = parser.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    labels = json.loads(meta["labels"])
    prep = json.loads(meta["preprocessing"])
    for path in args.images:
        logits = session.run(["logits"], {"input": preprocess(load_rgb(path), prep)})[0][0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-probs)[: max(1, args.top)]
        if args.json:
            print(json.dumps({"image": path, "top": [
                {"label": labels[i], "probability": float(probs[i])} for i in order]}))
            continue
        if len(args.images) > 1:
            print(path)
        for i in order:
            print(f"{labels[i]}\\t{probs[i]:.4f}")


if __name__ == "__main__":
    main()
'''


# ---------------------------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters talk a lot (deprecation notices, tracer warnings, fallbacks logged with full
    tracebacks); what matters is recorded in the result, the rest is kept out of the terminal."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir",
             "onnxruntime", "root")
    loggers = [logging.getLogger(n) for n in names if n != "root"] + [logging.getLogger()]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


@contextlib.contextmanager
def _native_stdout_to_log() -> Iterator[None]:
    """When it fails, the TorchScript-based exporter prints its whole graph to the process's
    stdout from C++ (torch leaves its ONNX log switched on): catch that at the file-descriptor
    level and put it in the log, not in the user's terminal or a CLI's output."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no usable stdout (a windowed app)
        saved = None
    if saved is None:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            printed = sink.read(100_000).decode("utf-8", "replace").strip()
            if printed:
                log.debug("the TorchScript-based ONNX exporter printed:\n%s", printed)


@contextlib.contextmanager
def _scratch(folder: Path) -> Iterator[Path]:
    """A temporary folder inside ``folder`` (same file system: ``os.replace`` is atomic)."""
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _install(scratch: Path, folder: Path) -> list[Path]:
    """Move every file of ``scratch`` into ``folder``, each with ``os.replace``."""
    installed = []
    for source in sorted(p for p in scratch.iterdir() if p.is_file()):
        os.chmod(source, FILE_MODE)
        target = folder / source.name
        os.replace(source, target)
        installed.append(target)
    # the main file first: model.onnx before model.onnx.data
    return sorted(installed, key=lambda p: (p.suffix in (".data", ".json"), p.name))


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_words(check: CheckSet) -> str:
    real = f"{check.images} real images + " if check.images else ""
    return f"{real}1 single + {RANDOM_BATCH} random inputs"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "…"


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
