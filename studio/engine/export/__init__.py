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

A run's export also carries its calibration, fitted on the run's validation split
(:mod:`studio.engine.calibration`): the temperature and the unknown threshold travel in the ONNX
metadata (``calibration``, JSON), the report, the model card and the bundle's
``calibration.json``, and the bundle's ``predict.py`` applies both.

Formats are entries of ``REGISTRY`` (:class:`ExportFormat`: default file name, the suffixes
``--out`` may name, the writer); the bundle writes all of them.

The model-level exporters (``export_onnx``, ``export_torchscript``, ``export_safetensors``,
``export_int8``, ``export_model_onnx``) need no run folder; ``export_run`` and
``export_bundle`` export a run folder written by the trainer and write ``export_report.json``.

The package, one question per module:

- ``results``: what an export measured and wrote (Parity, FormatResult, ExportReport, ExportError);
- ``verify``: how a file is run with its own runtime and judged against PyTorch;
- ``onnx``: ONNX through the dynamo or the TorchScript-based exporter, its metadata, int8;
- ``torch_formats``: TorchScript and safetensors;
- ``bundle``: the model card and ``predict.py`` (``predict_script.py``, verbatim) a bundle carries;
- ``predict_script``: the bundle's ``predict.py`` itself (numpy, Pillow, onnxruntime only);
- ``run_export``: the format registry, exporting a run folder, its images, the calibration it
  carries and ``export_report.json``;
- ``common``: quiet exporters, scratch folders moved into place, one-line errors.

This module only re-exports the public names. To replace a name in a test, patch the module
that looks it up (``studio.engine.export.onnx._onnx_dynamo``,
``studio.engine.export.torch_formats.run_torchscript``), not this one.
"""

from studio.engine.export.bundle import PREDICT_SCRIPT, model_card, predict_py
from studio.engine.export.onnx import (
    DEFAULT_OPSET,
    ONNX_EXPORTERS,
    export_int8,
    export_model_onnx,
    export_onnx,
    onnx_metadata,
    read_onnx_metadata,
    state_bytes,
)
from studio.engine.export.results import ExportError, ExportReport, FormatResult, Parity
from studio.engine.export.run_export import (
    ACCURACY_IMAGES,
    CALIBRATION_IMAGES,
    CHECK_IMAGES,
    FILE_NAMES,
    FORMATS,
    REGISTRY,
    REPORT_NAME,
    ExportFormat,
    Progress,
    RunModel,
    default_out,
    export_bundle,
    export_run,
    load_run_model,
)
from studio.engine.export.torch_formats import (
    export_safetensors,
    export_torchscript,
    read_torchscript_extras,
)
from studio.engine.export.verify import (
    ATOL,
    EXACT_SLACK,
    RANDOM_BATCH,
    RTOL,
    CheckSet,
    compare,
    compare_exact,
    judge,
    make_check_set,
    run_onnx,
    run_torchscript,
)

__all__ = [
    "ACCURACY_IMAGES",
    "ATOL",
    "CALIBRATION_IMAGES",
    "CHECK_IMAGES",
    "DEFAULT_OPSET",
    "EXACT_SLACK",
    "FILE_NAMES",
    "FORMATS",
    "ONNX_EXPORTERS",
    "PREDICT_SCRIPT",
    "REGISTRY",
    "ExportFormat",
    "RANDOM_BATCH",
    "REPORT_NAME",
    "RTOL",
    "CheckSet",
    "ExportError",
    "ExportReport",
    "FormatResult",
    "Parity",
    "Progress",
    "RunModel",
    "compare",
    "compare_exact",
    "default_out",
    "export_bundle",
    "export_int8",
    "export_model_onnx",
    "export_onnx",
    "export_run",
    "export_safetensors",
    "export_torchscript",
    "judge",
    "load_run_model",
    "make_check_set",
    "model_card",
    "onnx_metadata",
    "predict_py",
    "read_onnx_metadata",
    "read_torchscript_extras",
    "run_onnx",
    "run_torchscript",
    "state_bytes",
]
