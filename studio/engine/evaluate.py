"""Where a model is wrong, not just how often: metrics, confusion matrix, top losses, prediction.

``evaluate_run`` runs a run's checkpoint (best by default) over its validation split, or over
another folder of the same classes, and returns an :class:`Evaluation` holding every image's
class probabilities; the metrics are computed from those, so the GUI can show any cell of the
confusion matrix without running the model again. ``Predictor`` answers for single image files
with the run's own preprocessing.

Undefined ratios follow scikit-learn's ``zero_division=0``: a class never predicted has precision
0, a class with no images in the split has recall 0 (and support 0). Macro averages are taken over
the classes that have images in the split, so a class absent from a held-out folder does not
drag the average down; weighted averages weigh by support.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from studio.engine.calibration import TARGET_PRECISION, Calibration, calibrate
from studio.engine.data import Sample, scan_folder
from studio.engine.errors import DatasetError, StudioError
from studio.engine.images import FolderDataset, build_transforms, load_image
from studio.engine.metrics import (  # noqa: F401 - also imported from here by callers
    ClassMetrics,
    average_metrics,
    confusion_matrix,
    per_class_metrics,
)
from studio.engine.runs import OpenedRun, checkpoint_identity, open_run

SPLITS = ("auto", "val", "test", "train", "all")
TOP_LOSSES = 24  # images listed by loss in the report
TOP_CONFUSED = 10  # class pairs listed by count
BATCH_SIZE = 64

Progress = Callable[[int, int], None]  # (images done, images in all)


class EvaluationCancelled(StudioError):
    pass




def most_confused(matrix: np.ndarray, limit: int = TOP_CONFUSED) -> list[tuple[int, int, int]]:
    """Off-diagonal cells as (true, predicted, count), largest first; ties in label order."""
    cells = [(int(matrix[t, p]), t, p) for t in range(matrix.shape[0])
             for p in range(matrix.shape[1]) if t != p and matrix[t, p] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(t, p, count) for count, t, p in cells[:limit]]


# ---------------------------------------------------------------------------------------------
# An evaluation: every image's probabilities, and what follows from them


@dataclass(frozen=True, slots=True)
class ImageResult:
    """One image: its true class, the model's answer, and how sure it was."""

    index: int
    path: str
    true: int
    predicted: int
    confidence: float  # probability of the predicted class
    true_probability: float
    loss: float  # cross-entropy of the true class

    @property
    def correct(self) -> bool:
        return self.true == self.predicted

    def to_json(self, labels: Sequence[str]) -> dict[str, Any]:
        return {"path": self.path, "true": labels[self.true],
                "predicted": labels[self.predicted], "confidence": self.confidence,
                "true_probability": self.true_probability, "loss": self.loss}


@dataclass
class Evaluation:
    labels: list[str]
    paths: list[str]
    targets: np.ndarray  # (N,) int64
    probabilities: np.ndarray  # (N, C) float32, rows sum to 1
    source: str = ""  # the folder evaluated
    split: str = ""  # which of its images: val, test, train or all
    run_dir: str = ""
    checkpoint: str = ""
    epoch: int | None = None
    notes: list[str] = field(default_factory=list)
    logits: np.ndarray | None = None  # (N, C) float32, for temperature scaling
    target_precision: float = TARGET_PRECISION  # what the unknown threshold aims for

    def __post_init__(self) -> None:
        n, c = len(self.paths), len(self.labels)
        self.targets = np.asarray(self.targets, dtype=np.int64).reshape(n)
        self.probabilities = np.asarray(self.probabilities, dtype=np.float32).reshape(n, c)
        if self.logits is not None:
            self.logits = np.asarray(self.logits, dtype=np.float32).reshape(n, c)
        self._calibration: Calibration | None = None
        self.predicted = (self.probabilities.argmax(axis=1) if n
                          else np.zeros(0, dtype=np.int64))
        self.matrix = confusion_matrix(self.targets, self.predicted, c)
        self.per_class = per_class_metrics(self.matrix)
        self.macro, self.weighted = average_metrics(self.per_class)

    @property
    def images(self) -> int:
        return len(self.paths)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.targets).mean()) if self.images else 0.0

    @property
    def top5_accuracy(self) -> float | None:
        """Only meaningful with more than 5 classes; ``None`` otherwise."""
        if len(self.labels) <= 5 or not self.images:
            return None
        top = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :5]
        return float((top == self.targets[:, None]).any(axis=1).mean())

    def result(self, index: int) -> ImageResult:
        probs = self.probabilities[index]
        true, predicted = int(self.targets[index]), int(self.predicted[index])
        p_true = float(probs[true])
        return ImageResult(index, self.paths[index], true, predicted, float(probs[predicted]),
                           p_true, float(-math.log(max(p_true, 1e-12))))

    def cell(self, true: int, predicted: int) -> list[ImageResult]:
        """The images of one confusion-matrix cell, the most confident first."""
        hits = np.flatnonzero((self.targets == true) & (self.predicted == predicted))
        results = [self.result(int(i)) for i in hits]
        return sorted(results, key=lambda r: (-r.confidence, r.path))

    def misclassified(self) -> list[ImageResult]:
        wrong = np.flatnonzero(self.targets != self.predicted)
        return sorted((self.result(int(i)) for i in wrong), key=lambda r: (-r.loss, r.path))

    def top_losses(self, limit: int = TOP_LOSSES) -> list[ImageResult]:
        """The images the model is most confidently wrong about: highest loss first."""
        if not self.images:
            return []
        p_true = self.probabilities[np.arange(self.images), self.targets]
        order = np.argsort(p_true, kind="stable")[:limit]
        return [self.result(int(i)) for i in order]

    def most_confused(self, limit: int = TOP_CONFUSED) -> list[tuple[str, str, int]]:
        return [(self.labels[t], self.labels[p], n) for t, p, n in most_confused(self.matrix,
                                                                                 limit)]

    @property
    def calibration(self) -> Calibration:
        """ECE, reliability bins, a temperature and an unknown threshold fitted on these
        images (from the logits; from log-probabilities when an evaluation has none)."""
        if self._calibration is None:
            logits = self.logits if self.logits is not None else \
                np.log(np.maximum(self.probabilities, 1e-30))
            self._calibration = calibrate(logits, self.targets, self.target_precision)
        return self._calibration

    def to_json(self) -> dict[str, Any]:
        calibration = self.calibration.to_json()
        if self.split != "val":
            calibration["note"] = "; ".join(filter(None, [
                f"fitted on the {self.split} images evaluated, not a validation split",
                calibration["note"]]))
        return {
            "run_dir": self.run_dir, "checkpoint": self.checkpoint, "epoch": self.epoch,
            "data": self.source, "split": self.split, "images": self.images,
            "labels": list(self.labels),
            "accuracy": self.accuracy, "top5_accuracy": self.top5_accuracy,
            "per_class": {name: m.to_json() for name, m in zip(self.labels, self.per_class,
                                                                strict=True)},
            "macro_avg": self.macro.to_json(), "weighted_avg": self.weighted.to_json(),
            "confusion_matrix": self.matrix.tolist(),
            "most_confused": [{"true": t, "predicted": p, "count": n}
                              for t, p, n in self.most_confused()],
            "top_losses": [r.to_json(self.labels) for r in self.top_losses()],
            "misclassified": [r.to_json(self.labels) for r in self.misclassified()],
            "calibration": calibration,
            "notes": list(self.notes),
        }

    def report(self) -> str:
        """A readable report for a terminal."""
        width = max(12, *(len(name) for name in self.labels))
        lines = [f"{self.images} {self.split} images of {self.source}"
                 + (f" · {self.checkpoint} checkpoint (epoch {self.epoch})" if self.epoch
                    else ""),
                 f"accuracy      {self.accuracy:.2%}"]
        if self.top5_accuracy is not None:
            lines.append(f"top-5 accuracy {self.top5_accuracy:.2%}")
        lines += ["", f"{'class':<{width}}  precision  recall     f1  support"]
        rows = [*zip(self.labels, self.per_class, strict=True),
                ("macro avg", self.macro), ("weighted avg", self.weighted)]
        for i, (name, m) in enumerate(rows):
            if i == len(self.labels):
                lines.append("")
            lines.append(f"{name:<{width}}  {m.precision:9.3f}  {m.recall:6.3f}  {m.f1:5.3f}  "
                         f"{m.support:7d}")
        confused = self.most_confused(5)
        if confused:
            lines += ["", "most confused (true → predicted):"]
            lines += [f"  {t} → {p}: {n}" for t, p, n in confused]
        wrong = self.top_losses(5)
        wrong = [r for r in wrong if not r.correct]
        if wrong:
            lines += ["", "top losses:"]
            lines += [f"  {r.path}: {self.labels[r.true]} predicted as "
                      f"{self.labels[r.predicted]} ({r.confidence:.0%})" for r in wrong]
        if self.images:
            cal = self.calibration
            lines += ["", f"calibration   ECE {cal.ece:.3f} → {cal.ece_calibrated:.3f} with "
                          f"temperature {cal.temperature:.3f} ({len(cal.bins)} bins)"]
            if cal.unknown_threshold is not None and cal.coverage is not None:
                lines.append(f"unknown below {cal.unknown_threshold:.3f} for precision "
                             f"{cal.target_precision:.2f}: {cal.coverage:.1%} of images answered")
            if cal.note:
                lines.append(f"note: {cal.note}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Running a checkpoint over images


def evaluate_run(run_dir: str | os.PathLike[str], data: str | os.PathLike[str] | None = None,
                 checkpoint: str = "best", split: str = "auto", batch_size: int = BATCH_SIZE,
                 device: str = "auto", progress: Progress | None = None,
                 stop: threading.Event | None = None,
                 target_precision: float = TARGET_PRECISION) -> Evaluation:
    """Evaluate ``run_dir``'s checkpoint on its validation split, or on the folder ``data``
    (its test/ split if it has one, else all its images). Classes are matched by name."""
    if split not in SPLITS:
        raise StudioError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    run = open_run(run_dir, checkpoint, action="evaluating")
    root = str(data) if data is not None else run.data_root
    if not root:
        raise DatasetError(f"the run in {run.run_dir} names no dataset folder; pass one with "
                           f"--data")
    own = data is None
    scan = scan_folder(root, run.config.data.val_fraction if own else 0.0,
                       run.config.train.seed)
    samples, chosen, notes = _pick_samples(run, scan.classes, scan.splits, split, own, root)
    logits = predict_logits(run, samples, batch_size, device, progress, stop)
    targets = np.array([s.label for s in samples], dtype=np.int64)
    return Evaluation(list(run.labels), [s.path for s in samples], targets, _softmax(logits),
                      source=str(Path(scan.root)), split=chosen, run_dir=str(run.run_dir),
                      checkpoint=run.checkpoint, epoch=run.epoch, notes=notes, logits=logits,
                      target_precision=target_precision)


def fit_run_calibration(run: OpenedRun, target_precision: float = TARGET_PRECISION,
                        device: str = "auto") -> Calibration | None:
    """Temperature and unknown threshold fitted on the run's own validation split (None when
    the dataset is gone or has no validation images): what an export carries. The model is
    left on the CPU, where the exporters want it."""
    root = run.data_root
    if not root:
        return None
    try:
        scan = scan_folder(root, run.config.data.val_fraction, run.config.train.seed)
        if not scan.splits.get("val"):
            return None
        samples, _, _ = _pick_samples(run, scan.classes, scan.splits, "val", True, root)
    except DatasetError:
        return None
    try:
        logits = predict_logits(run, samples, device=device,
                                workers=0 if len(samples) <= 256 else -1)
    finally:
        run.model.cpu()
    return calibrate(logits, np.array([s.label for s in samples]), target_precision)


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def _pick_samples(run: OpenedRun, classes: Sequence[str], splits: dict[str, Sequence[Sample]],
                  split: str, own: bool, root: str) -> tuple[list[Sample], str, list[str]]:
    notes: list[str] = []
    index = {name: i for i, name in enumerate(run.labels)}
    foreign = [name for name in classes if name not in index]
    if foreign and len(foreign) == len(classes):
        raise DatasetError(f"none of the classes in {root} ({', '.join(classes[:5])}) is a class "
                           f"of the run ({', '.join(run.labels[:5])}); evaluate a folder with "
                           f"the run's class names")
    if foreign:
        notes.append(f"classes not in the run are left out: {', '.join(foreign)}")
    if split == "auto":
        if own:
            split = "val" if splits.get("val") else "train"
            if split == "train":
                notes.append("the dataset holds no validation images, so the training images "
                             "are evaluated (expect optimistic figures)")
        else:
            split = next((s for s in ("test", "val") if splits.get(s)), "all")
    if split == "all":
        chosen = [s for name in ("train", "val", "test") for s in splits.get(name, ())]
    elif split not in splits:
        raise DatasetError(f"{root} has no {split} split; its splits are "
                           f"{', '.join(sorted(splits))}")
    else:
        chosen = list(splits[split])
    samples = [Sample(s.path, index[classes[s.label]]) for s in chosen
               if classes[s.label] in index]
    if not samples:
        raise DatasetError(f"the {split} split of {root} holds no images of the run's classes; "
                           f"choose another folder or split")
    return samples, split, notes


def predict_samples(run: OpenedRun, samples: Sequence[Sample], batch_size: int = BATCH_SIZE,
                    device: str = "auto", progress: Progress | None = None,
                    stop: threading.Event | None = None, workers: int = -1) -> np.ndarray:
    """Class probabilities (N, C) of every sample, in order, in fp32 (``workers``: DataLoader
    workers, -1 chosen from the machine)."""
    return _softmax(predict_logits(run, samples, batch_size, device, progress, stop, workers))


def predict_logits(run: OpenedRun, samples: Sequence[Sample], batch_size: int = BATCH_SIZE,
                   device: str = "auto", progress: Progress | None = None,
                   stop: threading.Event | None = None, workers: int = -1) -> np.ndarray:
    """The model's logits (N, C) of every sample, in order, in fp32."""
    from studio.engine.runtime import loader_workers, pick_device

    target = pick_device(device)
    model = run.model.to(target).eval()
    dataset = FolderDataset(samples, build_transforms(run.prep()))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        pin_memory=target.type == "cuda", **loader_workers(workers))
    out = np.zeros((len(samples), len(run.labels)), dtype=np.float32)
    done = 0
    if progress is not None:
        progress(0, len(samples))
    with torch.inference_mode():
        for images, _ in loader:
            if stop is not None and stop.is_set():
                raise EvaluationCancelled("evaluation stopped")
            logits = model(images.to(target, non_blocking=True)).float()
            out[done:done + len(images)] = logits.cpu().numpy()
            done += len(images)
            if progress is not None:
                progress(done, len(samples))
    return out


# ---------------------------------------------------------------------------------------------
# Single images


@dataclass(frozen=True, slots=True)
class ImagePrediction:
    path: str
    top: tuple[tuple[str, float], ...]  # (class, probability), most likely first

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "top": [{"class": c, "probability": p} for c, p in self.top]}


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """One image file, RGB; a missing or unreadable file is a DatasetError (one sentence)."""
    try:
        return load_image(path)
    except FileNotFoundError as error:
        raise DatasetError(f"{path} does not exist; pass the path of an image file") from error
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{path} cannot be read as an image ({error}); pass a JPEG, "
                           f"PNG or another format Pillow opens") from error


class Predictor:
    """A run's model loaded once, answering for image files with the run's preprocessing."""

    def __init__(self, run_dir: str | os.PathLike[str], checkpoint: str = "best",
                 device: str = "auto") -> None:
        from studio.engine.runtime import pick_device

        self.run = open_run(run_dir, checkpoint, action="predicting")
        self.labels = list(self.run.labels)
        self.device = pick_device(device)
        self.model = self.run.model.to(self.device).eval()
        self.transform = build_transforms(self.run.prep())
        self.identity = checkpoint_identity(run_dir, checkpoint)  # what a cache keys it by
        self.lock = threading.Lock()  # one forward at a time: Grad-CAM hooks the model

    def predict(self, path: str | os.PathLike[str], k: int = 5) -> ImagePrediction:
        """Top-``k`` classes of one image file; a file that is no image is a DatasetError."""
        return self.predict_image(read_image(path), str(path), k)

    def predict_image(self, image: Image.Image, name: str = "", k: int = 5) -> ImagePrediction:
        batch = self.transform(image).unsqueeze(0).to(self.device)
        with self.lock, torch.inference_mode():
            probs = torch.softmax(self.model(batch).float(), dim=1)[0].cpu()
        k = max(1, min(k, len(self.labels)))
        values, indices = probs.topk(k)
        return ImagePrediction(name, tuple((self.labels[int(i)], float(v))
                                           for v, i in zip(values, indices, strict=True)))
