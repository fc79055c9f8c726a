"""ExportPanel: one-click, verified export of a finished run (engine: studio.engine.export)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QStyle,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.ui.tasks import BackgroundTask
from studio.ui.text import sentence

FORMAT_CHOICES = (
    ("bundle", "Bundle: every format below, a model card and predict.py, in one folder"),
    ("onnx", "ONNX (verified with onnxruntime)"),
    ("int8", "ONNX int8 (quantized, with its size and accuracy change)"),
    ("torchscript", "TorchScript (.pt, loads with torch.jit.load alone)"),
    ("safetensors", "safetensors weights + labels.json + preprocessing.json"),
)
COLUMNS = ("Format", "Files", "Size", "Exporter", "Max |Δlogit|", "Top-1 agreement", "Verified")


def run_has_checkpoint(run_dir: str) -> bool:
    from studio.engine.runs import RunPaths

    return RunPaths(run_dir).has_checkpoint()


class ExportPanel(QWidget):
    """Choose a run and formats, export in the background, show the verification report."""

    export_finished = Signal(object)  # ExportReport, verified or not

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._task = BackgroundTask(self)
        self._task.succeeded.connect(self._on_task_succeeded)
        self._task.failed.connect(self._on_task_failed)
        self._out_dir = ""

        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("a run folder (it holds config.toml and checkpoints/)")
        self.run_edit.setToolTip("The training run to export; a finished run is filled in here")
        self.run_edit.textChanged.connect(self._on_run_edit_text_changed)
        browse = QPushButton("Browse…")
        browse.setToolTip("Pick a run folder written by Train or `studio train`")
        browse.clicked.connect(self._on_browse_clicked)
        run_row = QHBoxLayout()
        run_row.addWidget(self.run_edit, 1)
        run_row.addWidget(browse)

        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.addItem("best (highest validation metric)", "best")
        self.checkpoint_combo.addItem("last (the final epoch)", "last")
        self.checkpoint_combo.setToolTip("Which checkpoint of the run to export")
        self.opset_spin = QSpinBox()
        self.opset_spin.setRange(0, 23)
        self.opset_spin.setSpecialValueText("default (18)")
        self.opset_spin.setToolTip("ONNX opset; the default suits onnxruntime, TensorRT and "
                                   "OpenVINO")

        self.format_group = QButtonGroup(self)
        formats = QGroupBox("Format")
        formats_layout = QVBoxLayout(formats)
        for index, (key, label) in enumerate(FORMAT_CHOICES):
            button = QRadioButton(label)
            button.setProperty("format", key)
            button.setToolTip(f"Export as {key}; every file is checked against PyTorch")
            self.format_group.addButton(button, index)
            formats_layout.addWidget(button)
        self.format_group.button(0).setChecked(True)

        form = QFormLayout()
        form.addRow("Run folder:", run_row)
        form.addRow("Checkpoint:", self.checkpoint_combo)
        form.addRow("ONNX opset:", self.opset_spin)

        style = self.style()
        save_icon = style.standardIcon(QStyle.StandardPixmap.SP_DialogSaveButton)
        self.export_button = QPushButton(save_icon, "Export")
        self.export_button.setObjectName("exportButton")
        self.export_button.setToolTip("Export and verify against PyTorch on real validation "
                                      "images and a random batch")
        self.export_button.clicked.connect(self._on_export_button_clicked)
        self.open_button = QPushButton(style.standardIcon(QStyle.StandardPixmap.SP_DirOpenIcon),
                                       "Open folder")
        self.open_button.setToolTip("Show the exported files")
        self.open_button.setEnabled(False)
        self.open_button.clicked.connect(self._on_open_button_clicked)
        buttons = QHBoxLayout()
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.open_button)
        buttons.addStretch(1)

        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.setVisible(False)
        self.status_label = QLabel("Train a run (or pick a run folder) to export it.")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setToolTip("What was written and how closely it matches PyTorch")

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(formats)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addWidget(self.table, 1)
        self._update_enabled()

    # -- public ---------------------------------------------------------------------------

    def set_run_dir(self, run_dir: str) -> None:
        self.run_edit.setText(run_dir)

    def selected_format(self) -> str:
        return str(self.format_group.checkedButton().property("format"))

    def start_export(self) -> None:
        run_dir = self.run_edit.text().strip()
        if not run_has_checkpoint(run_dir):
            self._say(f"{run_dir or 'No run folder'} has no checkpoint yet; finish at least one "
                      f"epoch of training first.", error=True)
            return
        fmt = self.selected_format()
        checkpoint = str(self.checkpoint_combo.currentData())
        opset = self.opset_spin.value() or None

        def job() -> Any:
            from studio.engine.export import ExportError, export_run

            try:
                return export_run(run_dir, fmt, checkpoint=checkpoint, opset=opset)
            except ExportError as error:
                return error  # a failed verification still has a report worth showing

        self.table.setRowCount(0)
        self.progress.setVisible(True)
        self._say(f"Exporting {fmt} from the {checkpoint} checkpoint and checking it against "
                  f"PyTorch…")
        self.export_button.setEnabled(False)
        self._task.start(job)

    # -- slots ----------------------------------------------------------------------------

    @Slot(str)
    def _on_run_edit_text_changed(self, text: str) -> None:
        self._update_enabled()

    @Slot()
    def _on_browse_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a run folder", self.run_edit.text())
        if path:
            self.run_edit.setText(path)

    @Slot()
    def _on_export_button_clicked(self) -> None:
        self.start_export()

    @Slot()
    def _on_open_button_clicked(self) -> None:
        if self._out_dir:
            QDesktopServices.openUrl(QUrl.fromLocalFile(self._out_dir))

    @Slot(object)
    def _on_task_succeeded(self, outcome: Any) -> None:
        self.progress.setVisible(False)
        self._update_enabled()
        report = getattr(outcome, "result", None) if isinstance(outcome, Exception) else outcome
        if isinstance(outcome, Exception):
            self._say(str(outcome), error=True)
        if report is None:
            return
        if hasattr(report, "results"):
            self._show_report(report)
            self.export_finished.emit(report)
        else:  # an ExportError carrying one FormatResult
            self._show_results([report], Path(self.run_edit.text()))

    @Slot(str)
    def _on_task_failed(self, message: str) -> None:
        self.progress.setVisible(False)
        self._update_enabled()
        self._say(message, error=True)

    # -- helpers --------------------------------------------------------------------------

    def _show_report(self, report: Any) -> None:
        self._out_dir = str(report.out_dir)
        self.open_button.setEnabled(True)
        self._show_results(report.results, Path(report.out_dir))
        if report.verified:
            self._say(f"Verified: every file gives PyTorch's answers ({report.images_checked} "
                      f"validation images and a random batch). Written to {report.out_dir}; "
                      f"the report is export_report.json.")
        else:
            failed = [r for r in report.results if not r.verified]
            reason = failed[0].message if failed else "verification failed"
            self._say(f"Not verified: {reason}. Files and report are in {report.out_dir}.",
                      error=True)

    def _show_results(self, results: list[Any], base: Path) -> None:
        self.table.setRowCount(len(results))
        for row, result in enumerate(results):
            parity = result.parity
            names = []
            for path in result.files:
                try:
                    names.append(str(Path(path).relative_to(base)))
                except ValueError:
                    names.append(Path(path).name)
            cells = [
                result.format,
                ", ".join(names),
                f"{result.size_bytes / 1e6:.1f} MB",
                result.exporter or "—",
                f"{parity.max_abs_diff:.2g}" if parity is not None else "—",
                f"{100 * parity.top1_agreement:.1f} %" if parity is not None else "—",
                "✓ yes" if result.verified else "✗ no",
            ]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column == len(cells) - 1:
                    item.setForeground(Qt.GlobalColor.darkGreen if result.verified
                                       else Qt.GlobalColor.red)
                item.setToolTip(result.message or text)
                self.table.setItem(row, column, item)

    def _say(self, message: str, error: bool = False) -> None:
        self.status_label.setText(sentence(message))
        self.status_label.setStyleSheet("color: #b00020;" if error else "")

    def _update_enabled(self) -> None:
        running = self._task.running
        self.export_button.setEnabled(not running and run_has_checkpoint(
            self.run_edit.text().strip()))
