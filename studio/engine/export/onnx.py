"""ONNX and int8 ONNX: the files most runtimes load, so the ones most worth getting right.

The dynamo exporter is tried first and the TorchScript-based one when it fails or its file does
not match PyTorch; every file carries the labels and preprocessing in ``metadata_props`` and
is verified before it is moved into place. int8 is quantized from a verified fp32 file with
onnxruntime and reported, not judged, against PyTorch (see :func:`export_int8`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from studio import __version__
from studio.engine.export.common import _install, _quiet, _scratch
from studio.engine.export.results import ExportError, FormatResult
from studio.engine.export.verify import (
    CheckSet,
    _check_words,
    _numpy,
    _torch_logits,
    compare,
    judge,
    make_check_set,
    run_onnx,
)
from studio.engine.images import Preprocessing
from studio.format import first_line

log = logging.getLogger(__name__)

ONNX_EXPORTERS = ("dynamo", "torchscript")  # tried in this order
DEFAULT_OPSET = 18  # native to the dynamo exporter; onnxruntime ≥ 1.14, TensorRT ≥ 8.6, OpenVINO
# Weights above this many bytes go to an external data file: protobuf cannot serialise a
# message over 2 GiB, and the graph itself needs some room. A module variable so tests can
# exercise the path with a tiny model (patch it here: export_onnx and export_int8 read it here).
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 128 * 1024**2


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
                reason = first_line(error)
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
    """``labels``, ``preprocessing`` and ``calibration`` (decoded) and any other metadata_props
    of a file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    meta: dict[str, Any] = {p.key: p.value for p in proto.metadata_props}
    for key in ("labels", "preprocessing", "calibration"):
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
            result.message = f"onnxruntime could not quantize the model ({first_line(error)})"
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
# Helpers


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
