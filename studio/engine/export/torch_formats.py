"""TorchScript and safetensors: the files PyTorch itself loads, for users who stay in PyTorch
without Finetune Studio. Both carry the labels and preprocessing (TorchScript as extra files,
safetensors in its header and in JSON files beside it), and both are verified: the traced
module against PyTorch's logits, the weights by reading every tensor back bit for bit.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from studio.engine.config_io import FILE_MODE
from studio.engine.export.common import _install, _quiet, _scratch
from studio.engine.export.onnx import onnx_metadata
from studio.engine.export.results import ExportError, FormatResult, Parity
from studio.engine.export.verify import (
    ATOL,
    RTOL,
    CheckSet,
    _check_words,
    judge,
    make_check_set,
    run_torchscript,
)
from studio.engine.images import Preprocessing
from studio.format import first_line


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
            result.message = f"tracing failed ({first_line(error)})"
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


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
