"""Proof that an exported file gives the answers of the PyTorch model it came from.

Each file is run with its own runtime (onnxruntime, ``torch.jit.load``) on a :class:`CheckSet`:
real validation images, one image alone and a random batch of :data:`RANDOM_BATCH`, so that a
file whose batch axis is not dynamic fails here rather than in a user's hands. fp32 files must
agree within ``ATOL + RTOL · (the input's largest |logit|)``, and a top-1 disagreement is only
allowed where the two best logits are a near-tie. When a model's own fp32 arithmetic is
ill-conditioned, the file is judged against float64 instead (see :func:`judge`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from studio.engine.export.common import _quiet
from studio.engine.export.results import ExportError, Parity
from studio.format import first_line

log = logging.getLogger(__name__)

RTOL, ATOL = 1e-3, 1e-4  # fp32 tolerance of exported logits against PyTorch's
EXACT_SLACK = 2.0  # against float64: how much farther than PyTorch's fp32 a file may be
RANDOM_BATCH = 7  # a batch size other than the example's, to prove the batch axis dynamic


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
                          f"({first_line(error)})") from error


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
                          f"({first_line(error)})") from error


def _numpy(batch: torch.Tensor | np.ndarray) -> np.ndarray:
    array = batch.numpy() if isinstance(batch, torch.Tensor) else batch
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_words(check: CheckSet) -> str:
    real = f"{check.images} real images + " if check.images else ""
    return f"{real}1 single + {RANDOM_BATCH} random inputs"
