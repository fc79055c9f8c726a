"""The Train page's live part: progress while a run trains, and how the last run ended.

A mixin of TrainingPanel (it builds its progress and result boxes and answers the session's
events), kept apart so the panel's file stays about the settings form and the run controls.
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QProgressBar, QStyle, QVBoxLayout

from studio.engine.events import (
    BatchEnded,
    CacheReport,
    EpochEnded,
    FitEnded,
    FitStarted,
    Outcome,
    WarningIssued,
    weights_label,
)
from studio.engine.lora import lora_line
from studio.format import format_duration
from studio.ui.text import plural

MUTED_COLOR = "#6b6b6b"
WARNING_COLOR = "#a15c00"  # amber, readable on a light background
KEPT_WARNINGS = 3

OUTCOME_ICONS = {
    Outcome.COMPLETED: QStyle.StandardPixmap.SP_DialogApplyButton,
    Outcome.EARLY_STOPPED: QStyle.StandardPixmap.SP_MessageBoxInformation,
    Outcome.CANCELLED: QStyle.StandardPixmap.SP_MediaStop,
    Outcome.FAILED: QStyle.StandardPixmap.SP_MessageBoxCritical,
}


def as_sentence(text: str) -> str:
    text = text.strip().replace("val_acc", "val accuracy").replace("val_loss", "val loss")
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


class RunProgress:
    """Progress and result boxes; the panel's ``_paused`` says whether the run is paused."""

    _paused: bool
    _epochs: int
    _start_epoch: int
    _steps: int
    _best_val_acc: tuple[float, int] | None  # (accuracy 0–1, epoch)
    _run_dir: str

    def _build_progress(self) -> None:
        self._progress_box = QGroupBox("Progress", self)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%p %")
        self.progress_bar.setToolTip("Progress over the whole run: every batch of every epoch.")
        self.progress_label = QLabel("Not started. Press Train (Ctrl+Return) to begin.")
        self.progress_label.setWordWrap(True)
        self.progress_label.setToolTip("Epoch, batch, training speed and time left.")
        self.run_info_label = QLabel()
        self.run_info_label.setWordWrap(True)
        self.run_info_label.setStyleSheet(f"color: {MUTED_COLOR};")
        self.run_info_label.setToolTip("What this run trains on.")
        self.run_info_label.setVisible(False)
        self.cache_label = QLabel()
        self.cache_label.setWordWrap(True)
        self.cache_label.setStyleSheet(f"color: {MUTED_COLOR};")
        self.cache_label.setToolTip("Whether the frozen layers' output and the decoded images "
                                    "are cached, and why not when they are not.")
        self.cache_label.setVisible(False)
        self._caches: dict[str, str] = {}
        self.warning_label = QLabel()  # what the run said along the way: it outlasts the status
        self.warning_label.setWordWrap(True)  # bar (an out-of-memory recovery, say)
        self.warning_label.setStyleSheet(f"color: {WARNING_COLOR};")
        self.warning_label.setToolTip("What this run warned about while it trained.")
        self.warning_label.setVisible(False)
        self._warnings: list[str] = []
        box_layout = QVBoxLayout(self._progress_box)
        box_layout.addWidget(self.progress_bar)
        box_layout.addWidget(self.progress_label)
        box_layout.addWidget(self.run_info_label)
        box_layout.addWidget(self.cache_label)
        box_layout.addWidget(self.warning_label)

    def _build_result(self) -> None:
        self._result_box = QGroupBox("Result", self)
        self.result_icon = QLabel()
        self.result_icon.setFixedSize(28, 28)
        self.result_icon.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter)
        self.result_icon.setToolTip("How the last run ended.")
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.result_label.setToolTip("What happened in the last run.")
        self.best_label = QLabel()
        self.best_label.setToolTip("The best validation accuracy of the last run.")
        self.folder_label = QLabel()
        self.folder_label.setWordWrap(True)
        self.folder_label.setTextFormat(Qt.TextFormat.RichText)
        self.folder_label.linkActivated.connect(self._on_folder_label_link_activated)
        self.hint_label = QLabel()
        self.hint_label.setWordWrap(True)
        self.hint_label.setTextFormat(Qt.TextFormat.RichText)
        self.hint_label.setStyleSheet(f"color: {MUTED_COLOR};")
        self.hint_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint_label.setToolTip("How to continue this run.")

        top = QHBoxLayout()
        top.setSpacing(8)
        top.addWidget(self.result_icon, 0, Qt.AlignmentFlag.AlignTop)
        top.addWidget(self.result_label, 1)
        box_layout = QVBoxLayout(self._result_box)
        box_layout.addLayout(top)
        box_layout.addWidget(self.best_label)
        box_layout.addWidget(self.folder_label)
        box_layout.addWidget(self.hint_label)
        self._result_box.setVisible(False)

    @Slot(object)
    def on_fit_started(self, event: FitStarted) -> None:
        self._epochs, self._start_epoch = event.epochs, event.start_epoch
        self._steps = max(1, event.steps_per_epoch)
        self._best_val_acc = None
        self._run_dir = event.run_dir
        self.progress_bar.setRange(0, (event.epochs - event.start_epoch + 1) * self._steps)
        self.progress_bar.setValue(0)
        verb = "Resuming at" if event.start_epoch > 1 else "Starting"
        self.progress_label.setText(f"{verb} epoch {event.start_epoch}/{event.epochs}…")
        # exact counts, as on the Layers page: a head-only run trains a few thousand of millions
        trainable = (f"{event.trainable_params:,} of {event.total_params:,} parameters "
                     f"trainable")
        if event.adapted_layers:
            trainable = lora_line(event.trainable_params, event.total_params,
                                  event.adapter_params, event.adapted_layers)
        self.run_info_label.setText(
            f"{event.device} · {event.precision} · {event.train_images:,} train / "
            f"{event.val_images:,} val images · {plural(len(event.classes), 'class', 'classes')}"
            f" · {trainable}"
            f"{f' · {event.processes} processes' if event.processes > 1 else ''}")
        self.run_info_label.setVisible(True)
        self._caches = {}
        self.cache_label.setVisible(False)
        self._warnings = []
        self.warning_label.setVisible(False)
        self._result_box.setVisible(False)

    @Slot(object)
    def on_warning(self, event: WarningIssued) -> None:
        """Keep the run's last few warnings in view (the status bar shows each for a while)."""
        self._warnings = [*self._warnings, as_sentence(event.message)][-KEPT_WARNINGS:]
        self.warning_label.setText("\n".join(self._warnings))
        self.warning_label.setVisible(True)

    @Slot(object)
    def on_cache_reported(self, event: CacheReport) -> None:
        """One line per cache: on (images, size), reused, or off with the reason."""
        if event.state == "building":
            what = ("Computing the frozen layers' output" if event.kind == "features"
                    else "Decoding the images")
            self.progress_label.setText(f"{what} for {event.images:,} images, once…")
        text = event.describe()
        self._caches[event.kind] = text[:1].upper() + text[1:]
        self.cache_label.setText("\n".join(self._caches[k] for k in ("features", "images")
                                           if k in self._caches))
        self.cache_label.setVisible(True)

    @Slot(object)
    def on_batch_ended(self, event: BatchEnded) -> None:
        steps = max(1, event.steps)
        if steps != self._steps:  # the loader's length is authoritative
            self._steps = steps
            self.progress_bar.setMaximum((self._epochs - self._start_epoch + 1) * steps)
        self.progress_bar.setValue((event.epoch - self._start_epoch) * steps + event.step)
        text = (f"Epoch {event.epoch}/{self._epochs} · batch {event.step}/{steps} · "
                f"{event.images_per_second:,.0f} img/s · ETA {format_duration(event.eta_seconds)}")
        if event.step >= steps:
            text += " · validating…"
        self.progress_label.setText(f"Paused. {text}" if self._paused else text)

    @Slot(object)
    def on_epoch_ended(self, event: EpochEnded) -> None:
        self.progress_bar.setValue((event.epoch - self._start_epoch + 1) * self._steps)
        if event.val_acc == event.val_acc and (self._best_val_acc is None
                                               or event.val_acc > self._best_val_acc[0]):
            self._best_val_acc = (event.val_acc, event.epoch)
        parts = [f"Epoch {event.epoch}/{self._epochs} done in {format_duration(event.seconds)}"]
        if event.val_acc == event.val_acc:  # not NaN: there is a validation split
            parts.append(f"val accuracy {event.val_acc * 100:.1f} %")
            parts.append(f"val loss {event.val_loss:.3f}")
        self.progress_label.setText(" · ".join(parts))

    # -- result ---------------------------------------------------------------------------

    @Slot(object)
    def on_fit_ended(self, event: FitEnded) -> None:
        done = event.epochs_completed
        if event.outcome is Outcome.COMPLETED:
            summary = (f"Training completed: {plural(done, 'epoch')} in "
                       f"{format_duration(event.seconds)}.")
        elif event.outcome is Outcome.EARLY_STOPPED:
            summary = as_sentence(event.message)
        elif event.outcome is Outcome.CANCELLED:
            summary = (f"Stopped by you after {plural(done, 'complete epoch')}."
                       if done else "Stopped by you before the first epoch finished.")
        else:
            reason = as_sentence(event.message)
            summary = f"Training failed: {reason[:1].lower()}{reason[1:]}"
        icon = self.style().standardIcon(OUTCOME_ICONS[event.outcome])
        self.result_icon.setPixmap(icon.pixmap(24, 24))
        self.result_icon.setToolTip(event.outcome.value.replace("_", " "))
        self.result_label.setText(summary)

        best, which = self._best_val_acc, ""
        if event.monitor == "val_acc" and event.best_metric is not None and event.best_epoch:
            best = (event.best_metric, event.best_epoch)
            if event.best_weights == "ema":  # best.pt holds the moving average
                which = f", {weights_label(event.best_weights)}"
        self.best_label.setText(f"Best val accuracy: <b>{best[0] * 100:.1f} %</b> (epoch "
                                f"{best[1]}{which})" if best else "")
        self.best_label.setVisible(best is not None)

        run_dir = event.run_dir or self._run_dir
        self._run_dir = run_dir
        if run_dir and Path(run_dir).is_dir():
            url = QUrl.fromLocalFile(str(Path(run_dir).resolve())).toString()
            self.folder_label.setText(f"Run folder: <a href='{html.escape(url)}'>"
                                      f"{html.escape(_short_path(run_dir))}</a>")
            self.folder_label.setToolTip(f"Open {run_dir} in the file manager.")
        elif run_dir:
            self.folder_label.setText(f"Run folder: {html.escape(_short_path(run_dir))} "
                                      f"(not created)")
            self.folder_label.setToolTip(run_dir)
        self.folder_label.setVisible(bool(run_dir))

        hint = ""
        if event.outcome is Outcome.CANCELLED:
            hint = (f"Resume from epoch {done + 1} with:<br><code>studio train --resume "
                    f"{html.escape(run_dir)}</code>" if done
                    else "No epoch had finished, so there is nothing to resume.")
        self.hint_label.setText(hint)
        self.hint_label.setVisible(bool(hint))
        if event.outcome is Outcome.COMPLETED:
            self.progress_bar.setValue(self.progress_bar.maximum())
        self.progress_label.setText(as_sentence(f"{event.outcome.value.replace('_', ' ')} after "
                                              f"{format_duration(event.seconds)}"))
        self._result_box.setVisible(True)

    @Slot(str)
    def _on_folder_label_link_activated(self, link: str) -> None:
        if not QDesktopServices.openUrl(QUrl(link)):
            self.hint_label.setText(f"The folder could not be opened here; it is "
                                    f"{html.escape(QUrl(link).toLocalFile())}.")
            self.hint_label.setVisible(True)

def _short_path(path: str, keep: int = 2) -> str:
    """The last ``keep`` parts of a path (the full path is in the tooltip)."""
    parts = Path(path).parts
    return path if len(parts) <= keep + 1 else "…/" + "/".join(parts[-keep:])
