"""What an export measured and wrote, as records the CLI, the Export page and
``export_report.json`` all read: a format's :class:`FormatResult`, its logit :class:`Parity`
with PyTorch, a run's :class:`ExportReport`, and :class:`ExportError`, which carries the result
of a failed export so that the report can still say what was measured.

Kept apart from the code that fills them so that every exporter, the verifier and the run-level
orchestration can share them without importing one another.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio import __version__
from studio.engine.errors import StudioError


class ExportError(StudioError):
    """An export that failed or does not match PyTorch. ``result`` holds what was measured."""

    def __init__(self, message: str, result: FormatResult | None = None) -> None:
        super().__init__(message)
        self.result = result


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
    calibration: dict[str, Any] | None = None  # temperature and unknown threshold carried

    @property
    def verified(self) -> bool:
        return bool(self.results) and all(r.verified for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"studio_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "format": self.format, "verified": self.verified, "run_dir": str(self.run_dir),
                "checkpoint": self.checkpoint, "epoch": self.epoch, "backbone": self.backbone,
                "labels": self.labels, "preprocessing": self.preprocessing,
                "dataset": self.dataset_note, "images_checked": self.images_checked,
                "calibration": self.calibration,
                "exports": [r.to_json(self.out_dir) for r in self.results]}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
