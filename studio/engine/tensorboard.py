"""TensorBoard event files in the run folder, so ``tensorboard --logdir RUNS_ROOT`` shows every run.

``metrics.jsonl`` stays the record of a run; this is a view of the same facts for TensorBoard:
per logging step the training loss and accuracy, per epoch the losses, accuracies, learning rates
and speed, at the end the run's settings as hparams and the best checkpoint's confusion matrix.

It is optional twice over: ``train.tensorboard = false`` switches it off, and without the
``tensorboard`` package it is off by itself. Either way nothing is written and nothing of
TensorBoard is imported. A writer that cannot write (a full disk) says so once and turns itself
off; it never fails or slows a run beyond its own small cost.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from studio.engine.config import RunConfig
from studio.engine.config_io import to_dict
from studio.engine.errors import explain_os_error
from studio.engine.events import (
    BatchEnded,
    Callback,
    EpochEnded,
    FitEnded,
    FitStarted,
    Outcome,
)
from studio.engine.runs import RunPaths

if TYPE_CHECKING:
    from studio.engine.parts import Parts

log = logging.getLogger(__name__)

MATRIX_MAX_IMAGES = 5000  # above this the end of a run would wait too long for the matrix
MATRIX_INLINE_IMAGES = 500  # fewer are decoded in this process: starting workers costs more
MATRIX_TEXT_CLASSES = 50  # the counts as a text table too, up to this many classes
FLUSH_SECONDS = 30  # TensorBoard's writer thread flushes this often (and we at every epoch)
QUEUE = 256  # events waiting for the writer thread: a put never waits for the disk

PartsSource = Callable[[], "Parts | None"]


def tensorboard_callbacks(paths: RunPaths, config: RunConfig,
                          parts: PartsSource = lambda: None) -> list[Callback]:
    """The writer for a run, or nothing when it is switched off or TensorBoard is missing.
    ``parts`` gives the trainer's parts at the end (the validation split, the device)."""
    if not config.train.tensorboard:
        return []
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("no TensorBoard event files for this run: the tensorboard package is not "
                 "installed (pip install \"finetune-studio[tensorboard]\")")
        return []
    except Exception:  # a broken install (e.g. a protobuf it does not fit) is no reason to stop
        log.info("no TensorBoard event files for this run: TensorBoard cannot be imported",
                 exc_info=True)
        return []
    return [TensorBoardWriter(paths, config, SummaryWriter, parts)]


class TensorBoardWriter(Callback):
    """Writes a fit's events with ``torch.utils.tensorboard.SummaryWriter`` into
    ``RUN_DIR/tensorboard``. Epoch figures are logged at the epoch number, batch figures at
    the optimizer step, so a resumed run continues both curves."""

    def __init__(self, paths: RunPaths, config: RunConfig, writer_class: Any,
                 parts: PartsSource = lambda: None) -> None:
        self.paths = paths
        self.config = config
        self._writer_class = writer_class
        self._parts = parts
        self._writer: Any = None
        self.failed = False  # a write failed: off for the rest of the run

    # -- hooks ----------------------------------------------------------------------------

    def on_fit_start(self, event: FitStarted) -> None:
        try:
            self._writer = self._writer_class(log_dir=str(self.paths.tensorboard),
                                              flush_secs=FLUSH_SECONDS, max_queue=QUEUE)
        except Exception as error:
            self._give_up("creating the event file", error)

    def on_batch_end(self, event: BatchEnded) -> None:
        def write(writer: Any) -> None:
            writer.add_scalar("train/loss_batch", event.loss, event.global_step)
            writer.add_scalar("train/acc_batch", event.accuracy, event.global_step)

        self._do("writing a batch's figures", write)

    def on_epoch_end(self, event: EpochEnded) -> None:
        def write(writer: Any) -> None:
            figures = {"train/loss": event.train_loss, "train/acc": event.train_acc,
                       "val/loss": event.val_loss, "val/acc": event.val_acc,
                       "speed/images_per_second": event.images_per_second,
                       "speed/epoch_seconds": event.seconds}
            figures.update({f"lr/{group}": lr for group, lr in event.lr.items()})
            for tag, value in figures.items():
                if math.isfinite(value):  # no validation images: no val curve, not NaN
                    writer.add_scalar(tag, value, event.epoch)
            writer.flush()  # TensorBoard shows each epoch as it ends

        self._do(f"writing epoch {event.epoch}", write)

    def on_fit_end(self, event: FitEnded) -> None:
        if self._writer is None:
            return
        self._do("writing the hparams", lambda writer: self._write_hparams(writer, event))
        ended_well = event.outcome in (Outcome.COMPLETED, Outcome.EARLY_STOPPED)
        if ended_well and event.best_epoch and self._writer is not None:
            self._write_confusion_matrix(event.best_epoch, event.epochs_completed)
        self._close()

    # -- the end of a run -----------------------------------------------------------------

    def _write_hparams(self, writer: Any, event: FitEnded) -> None:
        """The run's settings beside its best figure, in the one event file (``add_hparams``
        would write a sub-run of its own, which TensorBoard lists as another run)."""
        from torch.utils.tensorboard.summary import hparams

        metrics: dict[str, float] = {}
        if event.best_metric is not None and math.isfinite(event.best_metric):
            metrics["hparam/best_metric"] = event.best_metric
        if event.best_epoch is not None:
            metrics["hparam/best_epoch"] = float(event.best_epoch)
        metrics["hparam/epochs_completed"] = float(event.epochs_completed)
        experiment, start, end = hparams(flat_hparams(self.config), metrics)
        for summary in (experiment, start, end):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, event.epochs_completed)

    def _write_confusion_matrix(self, best_epoch: int, last_epoch: int) -> None:
        """The best checkpoint run once more over the validation split: as costly as one
        validation pass, so only up to ``MATRIX_MAX_IMAGES`` images. Any failure is logged."""
        parts = self._parts()
        if parts is None or not parts.scan.splits["val"]:
            return
        samples = list(parts.scan.splits["val"])
        if len(samples) > MATRIX_MAX_IMAGES:
            log.info("no confusion matrix in TensorBoard: %d validation images are more than "
                     "%d; `studio eval` draws it", len(samples), MATRIX_MAX_IMAGES)
            return
        try:
            matrix, labels = self._best_matrix(parts, samples, best_epoch == last_epoch)
        except Exception as error:  # the run has ended well: this must not change that
            log.warning("the confusion matrix for TensorBoard could not be computed (%s: %s); "
                        "`studio eval %s` shows it", type(error).__name__, error,
                        self.paths.root)
            log.info("computing the confusion matrix failed", exc_info=True)
            return

        def write(writer: Any) -> None:
            image = render_confusion_matrix(matrix, labels)
            writer.add_image("val/confusion_matrix", image.transpose(2, 0, 1), best_epoch)
            if len(labels) <= MATRIX_TEXT_CLASSES:
                writer.add_text("val/confusion_matrix", matrix_markdown(matrix, labels),
                                best_epoch)

        self._do("writing the confusion matrix", write)

    def _best_matrix(self, parts: Parts, samples: Sequence[Any], last_is_best: bool
                     ) -> tuple[np.ndarray, list[str]]:
        from studio.engine.evaluate import confusion_matrix, predict_samples

        run = self._best_model(parts, last_is_best)
        train = self.config.train
        workers = 0 if len(samples) <= MATRIX_INLINE_IMAGES else train.workers
        probabilities = predict_samples(run, samples, train.batch_size, str(parts.device),
                                        workers=workers)
        targets = np.array([sample.label for sample in samples], dtype=np.int64)
        return confusion_matrix(targets, probabilities.argmax(axis=1), len(run.labels)), \
            list(run.labels)

    def _best_model(self, parts: Parts, last_is_best: bool) -> Any:
        """The best checkpoint's model without rebuilding it (a rebuild was most of this
        step's cost): the trained model itself when the last epoch was the best, else (or
        with model EMA, whose average best.pt may hold) a copy of it with best.pt's weights."""
        from studio.engine.checkpoint import evaluated_state, load_checkpoint

        model = parts.model
        if not last_is_best or parts.config.train.ema:
            model = copy.deepcopy(model)
            model.load_state_dict(evaluated_state(load_checkpoint(self.paths.best)))
        return _BestRun(model, parts.built.preprocessing, list(parts.scan.classes))

    # -- never in the way -----------------------------------------------------------------

    def _do(self, doing: str, work: Callable[[Any], None]) -> None:
        if self._writer is None:
            return
        try:
            work(self._writer)
        except Exception as error:
            self._give_up(doing, error)

    def _give_up(self, doing: str, error: Exception) -> None:
        """One sentence for the terminal and the log, the traceback for the log; then off."""
        reason = explain_os_error(error)[0] if isinstance(error, OSError) else \
            f"{type(error).__name__}: {error}"
        log.warning("TensorBoard event files in %s are off for the rest of this run: %s "
                    "failed (%s); metrics.jsonl keeps every figure", self.paths.tensorboard,
                    doing, reason)
        log.info("the TensorBoard writer failed", exc_info=(type(error), error,
                                                             error.__traceback__))
        self.failed = True
        self._close()

    def _close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            writer.close()  # flushes what is queued
        except Exception:
            log.info("closing the TensorBoard writer failed", exc_info=True)


# ---------------------------------------------------------------------------------------------
# What the files hold


@dataclass
class _BestRun:
    """What predict_samples needs of an opened run."""

    model: Any
    preprocessing: Any
    labels: list[str]

    def prep(self) -> Any:
        return self.preprocessing


def flat_hparams(config: RunConfig) -> dict[str, str | int | float]:
    """The config's values under dotted names (``optim.lr``, ``train.batch_size``,
    ``model.head.kind``); lists (groups, stages, globs) as JSON text, booleans as text (the
    hparams summary would turn them into 1.0 and 0.0)."""
    out: dict[str, str | int | float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list):
            out[prefix] = json.dumps(value, ensure_ascii=False)
        elif isinstance(value, bool):
            out[prefix] = "true" if value else "false"
        elif isinstance(value, int | float | str):
            out[prefix] = value

    raw = to_dict(config)
    raw.pop("schema_version", None)
    walk("", raw)
    return out


def matrix_markdown(matrix: np.ndarray, labels: Sequence[str]) -> str:
    """The counts as a Markdown table (TensorBoard's text tab draws it): rows true classes."""
    names = [_cell_text(name) for name in labels]
    lines = ["| true \\ predicted | " + " | ".join(names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, matrix, strict=True):
        lines.append(f"| {name} | " + " | ".join(str(int(count)) for count in row) + " |")
    return "\n".join(lines)


def _cell_text(name: str) -> str:
    return name.replace("|", "\\|")


LOW = np.array([255, 255, 255], dtype=np.float64)
HIGH = np.array([31, 84, 160], dtype=np.float64)
INK = (30, 30, 30)
MAX_SIDE = 960  # the matrix part of the image, in pixels, at most
LABEL_CHARS = 18


def render_confusion_matrix(matrix: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """A heatmap (H, W, 3) uint8: rows true classes, columns predicted ones, each cell
    coloured by its share of the true class, with counts and class names where they fit.
    The size depends only on the number of classes and their names."""
    from PIL import Image, ImageDraw, ImageFont

    matrix = np.asarray(matrix, dtype=np.int64)
    n = matrix.shape[0]
    cell = max(1, min(48, MAX_SIDE // max(1, n)))
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    text_h = size("Ag")[1]
    names = [name if len(name) <= LABEL_CHARS else name[:LABEL_CHARS - 1] + "…"
             for name in labels] if cell >= text_h else []
    label_w = max((size(name)[0] for name in names), default=0) + 8 if names else 0
    title = "rows: true class, columns: predicted, colour: share of the true class"
    pad = 6
    top = pad + text_h + pad + label_w
    left = pad + label_w
    width = max(left + n * cell + pad, pad + size(title)[0] + pad)
    height = top + n * cell + pad
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad), title, fill=INK, font=font)

    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64),
                      where=rows > 0)
    colours = (LOW + (HIGH - LOW) * share[..., None]).round().astype(np.uint8)
    grid = np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1)
    image.paste(Image.fromarray(grid, "RGB"), (left, top))
    draw.rectangle((left - 1, top - 1, left + n * cell, top + n * cell), outline=(200, 200, 200))

    if cell >= 2 * text_h:  # counts fit inside the cells
        for t in range(n):
            for p in range(n):
                text = str(int(matrix[t, p]))
                w, h = size(text)
                if w > cell - 2:
                    continue
                ink = (255, 255, 255) if share[t, p] > 0.5 else INK
                draw.text((left + p * cell + (cell - w) // 2, top + t * cell + (cell - h) // 2
                           - 1), text, fill=ink, font=font)
    for i, name in enumerate(names):
        w, h = size(name)
        y = top + i * cell + (cell - h) // 2 - 1
        draw.text((left - 4 - w, y), name, fill=INK, font=font)  # true, right-aligned
        strip = Image.new("RGB", (w + 2, text_h + 4), (255, 255, 255))
        ImageDraw.Draw(strip).text((1, 0), name, fill=INK, font=font)
        turned = strip.rotate(90, expand=True)  # predicted: bottom-up, ending at the matrix
        x = left + i * cell + (cell - turned.width) // 2
        image.paste(turned, (x, top - 4 - turned.height))
    return np.asarray(image, dtype=np.uint8).copy()
