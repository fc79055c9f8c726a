"""WeightsBox: the Backbone page's "Starting weights": pretrained, none or a local file, whether
pretrained weights are cached, and getting them there (Download now, Import weights file…).

The box edits ``model.weights`` of the project's RunConfig and follows it; the download itself
belongs to a :class:`~studio.ui.downloads.WeightsDownload` the window shares, so a download the
Train button started shows its progress here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QSignalBlocker, Qt, Signal, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QButtonGroup,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QWidget,
)

from studio.engine import timm_zoo
from studio.engine.backbones import (
    LOCAL_SUFFIXES,
    BackboneInfo,
    backbone_info,
    hub_cache_path,
    is_weights_file,
    pretrained_available,
    resolve_weights,
)
from studio.engine.config import ConfigError
from studio.engine.errors import StudioError
from studio.engine.timm_zoo import TimmWeights
from studio.ui.downloads import DownloadResult, DownloadState, WeightsDownload
from studio.ui.project import ProjectModel
from studio.ui.tasks import BackgroundTask
from studio.ui.text import sentence

ERROR_COLOR = "#c62828"
AMBER_COLOR = "#a05a00"
OK_COLOR = "#2e7d32"
MUTED_COLOR = "gray"

PRETRAINED, SCRATCH, LOCAL = range(3)
IMPORT_FILTER = "Weights (*.pth *.pt *.safetensors);;All files (*)"


class WeightsBox(QGroupBox):
    """The weights choice with its availability, and the download or import that fixes it."""

    refused = Signal(str)  # why an edit was refused; "" once an edit went through

    def __init__(self, project: ProjectModel, downloads: WeightsDownload | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__("Starting weights", parent)
        self._project = project
        self.downloads = downloads if downloads is not None else WeightsDownload(self)
        self._syncing = False
        self._awaiting_file = False  # "Local file…" chosen, no file given yet
        self._shown_key: tuple[str, str] | None = None  # the backbone and weights on show
        self._importer = BackgroundTask(self)
        self._build()

        project.config_changed.connect(self._on_project_config_changed)
        self.downloads.started.connect(self._on_downloads_started)
        self.downloads.progressed.connect(self._on_downloads_progressed)
        self.downloads.finished.connect(self._on_downloads_finished)
        self._importer.succeeded.connect(self._on_importer_succeeded)
        self._importer.failed.connect(self._on_importer_failed)
        self.sync_from_config()

    # -- building ---------------------------------------------------------------------------

    def _build(self) -> None:
        self._pretrained_radio = QRadioButton("Pretrained (ImageNet)")
        self._pretrained_radio.setToolTip("Start from the backbone's ImageNet weights: the best "
                                          "choice for most datasets")
        self._scratch_radio = QRadioButton("None — train from scratch")
        self._scratch_radio.setToolTip("Start from random weights; needs far more images and "
                                       "epochs")
        self._local_radio = QRadioButton("Local file…")
        self._local_radio.setToolTip("Start from a .safetensors/.pth/.pt state dict on disk "
                                     "(for example a checkpoint of an earlier run)")
        self._group = QButtonGroup(self)
        for button_id, radio in enumerate((self._pretrained_radio, self._scratch_radio,
                                           self._local_radio)):
            self._group.addButton(radio, button_id)
        self._group.idToggled.connect(self._on_group_id_toggled)

        self._path_edit = QLineEdit()
        self._path_edit.setPlaceholderText("path to a .safetensors, .pth or .pt file")
        self._path_edit.setToolTip("The weights file to start from; tensors that do not fit "
                                   "the model (its old head) are skipped")
        self._path_edit.setClearButtonEnabled(True)
        self._path_edit.editingFinished.connect(self._on_path_edit_editing_finished)
        self._path_button = QPushButton("Browse…")
        self._path_button.setToolTip("Choose a weights file in a file dialog")
        self._path_button.clicked.connect(self._on_path_button_clicked)

        self._status = _label()
        self._status.setMinimumHeight(self.fontMetrics().height() * 2)
        self._status.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)

        self._download_button = QPushButton("Download now")
        self._download_button.clicked.connect(self._on_download_button_clicked)
        self._import_button = QPushButton("Import weights file…")
        self._import_button.setToolTip("Use a .pth or .safetensors file you downloaded "
                                       "yourself (for example on another computer) as these "
                                       "pretrained weights; it is copied into torch's cache")
        self._import_button.clicked.connect(self._on_import_button_clicked)
        actions = QHBoxLayout()
        actions.addWidget(self._download_button)
        actions.addWidget(self._import_button)
        actions.addStretch(1)

        self._progress = QProgressBar()
        self._progress.setToolTip("Downloaded so far, of the whole file, and the speed")
        self._cancel_button = QPushButton("Cancel")
        self._cancel_button.setToolTip("Stop the download; what has arrived is kept, and the "
                                       "next download continues from there")
        self._cancel_button.clicked.connect(self._on_cancel_button_clicked)
        self._progress_row = QWidget()
        row = QHBoxLayout(self._progress_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self._progress, 1)
        row.addWidget(self._cancel_button)
        self._progress_row.hide()

        self._note = _label()  # how the last download or import ended
        self._note.hide()

        grid = QGridLayout(self)
        grid.addWidget(self._pretrained_radio, 0, 0, 1, 3)
        grid.addWidget(self._scratch_radio, 1, 0, 1, 3)
        grid.addWidget(self._local_radio, 2, 0)
        grid.addWidget(self._path_edit, 2, 1)
        grid.addWidget(self._path_button, 2, 2)
        grid.addWidget(self._status, 3, 0, 1, 3)
        grid.addLayout(actions, 4, 0, 1, 3)
        grid.addWidget(self._progress_row, 5, 0, 1, 3)
        grid.addWidget(self._note, 6, 0, 1, 3)
        grid.setColumnStretch(1, 1)
        grid.setRowStretch(3, 1)

        for name, widget in (("pretrained_radio", self._pretrained_radio),
                             ("scratch_radio", self._scratch_radio),
                             ("local_radio", self._local_radio),
                             ("weights_path_edit", self._path_edit),
                             ("weights_browse_button", self._path_button),
                             ("weights_status", self._status),
                             ("download_button", self._download_button),
                             ("import_weights_button", self._import_button),
                             ("download_progress", self._progress),
                             ("cancel_download_button", self._cancel_button),
                             ("weights_note", self._note)):
            widget.setObjectName(name)  # stable handles for tests and the main window

    # -- user edits -------------------------------------------------------------------------

    def _on_group_id_toggled(self, button_id: int, checked: bool) -> None:
        if self._syncing or not checked:
            return
        self._path_edit.setEnabled(button_id == LOCAL)
        self._path_button.setEnabled(button_id == LOCAL)
        self._awaiting_file = False
        if button_id == PRETRAINED:
            self._update(weights="default")
        elif button_id == SCRATCH:
            self._update(weights="none")
        elif self._path_edit.text().strip():
            self._write_local_path(self._path_edit.text())
        else:
            self._awaiting_file = True
            self.show_status()
            self._path_edit.setFocus()

    def _on_path_edit_editing_finished(self) -> None:
        if self._local_radio.isChecked() and self._path_edit.text().strip():
            self._write_local_path(self._path_edit.text())

    def _on_path_button_clicked(self) -> None:
        current = self._path_edit.text().strip()
        start = str(Path(current).expanduser().parent) if current else str(Path.home())
        path, _filter = QFileDialog.getOpenFileName(
            self, "Choose a weights file", start,
            "Weights (*.safetensors *.pth *.pt);;All files (*)")
        if path:
            with QSignalBlocker(self._group):
                self._local_radio.setChecked(True)
            self._write_local_path(path)

    def _write_local_path(self, text: str) -> None:
        # An absolute path: the engine tells a file from a weights name by its separator.
        path = str(Path(text.strip()).expanduser().absolute())
        self._awaiting_file = False
        with QSignalBlocker(self._path_edit):
            self._path_edit.setText(path)
        if path != self._project.config.model.weights:
            self._update(weights=path)
        else:
            self.show_status()

    def _update(self, **fields: Any) -> None:
        """Write to the project; a refused value is reported and the widgets go back."""
        try:
            self._project.update("model", **fields)
        except ConfigError as error:
            self.refused.emit(sentence(str(error)))
            self.sync_from_config()
        else:
            self.refused.emit("")

    @Slot()
    def _on_download_button_clicked(self) -> None:
        weights = self.pretrained_weights()
        if weights is not None and not pretrained_available(weights):
            self.downloads.start(weights)

    @Slot()
    def _on_cancel_button_clicked(self) -> None:
        self.downloads.cancel()
        self._cancel_button.setEnabled(False)
        self._cancel_button.setText("Cancelling…")

    @Slot()
    def _on_import_button_clicked(self) -> None:
        weights = self.pretrained_weights()
        if weights is None or self._importer.running:
            return
        path, _filter = QFileDialog.getOpenFileName(
            self, f"Import the {weights.name} weights of {self._project.config.model.backbone}",
            str(Path.home()), IMPORT_FILTER)
        if not path:
            return

        def run_import() -> object:
            from studio.engine.downloads import import_weights_file

            return import_weights_file(path, weights)

        self._set_note(f"Importing {path}…", MUTED_COLOR)
        self._importer.start(run_import)
        self._show_actions()

    # -- downloads and imports ending -------------------------------------------------------

    @Slot(object)
    def _on_downloads_started(self, weights: Any) -> None:
        self._set_note("", None)
        self._progress.setRange(0, 0)  # busy until the size is known
        self._progress.setFormat(f"Connecting for {hub_cache_path(weights).name}…")
        self._cancel_button.setEnabled(True)
        self._cancel_button.setText("Cancel")
        self._show_actions()

    @Slot(object)
    def _on_downloads_progressed(self, state: DownloadState) -> None:
        done_mb, speed = state.done / 1e6, state.bytes_per_second / 1e6
        if state.total:
            self._progress.setRange(0, max(1, state.total // 1024))
            self._progress.setValue(state.done // 1024)
            amount = f"{done_mb:.1f} of {state.total / 1e6:.1f} MB"
        else:
            self._progress.setRange(0, 0)
            amount = f"{done_mb:.1f} MB"
        self._progress.setFormat(f"{state.file_name}: {amount} · {speed:.1f} MB/s")

    @Slot(object)
    def _on_downloads_finished(self, result: DownloadResult) -> None:
        if result.outcome == "failed":
            self._set_note(sentence(result.message), ERROR_COLOR)
        elif result.outcome == "cancelled":
            self._set_note(sentence(result.message), MUTED_COLOR)
        self.show_status()

    @Slot(object)
    def _on_importer_succeeded(self, path: object) -> None:
        self._set_note(f"Imported into {path}.", OK_COLOR)
        self.show_status()

    @Slot(str)
    def _on_importer_failed(self, message: str) -> None:
        self._set_note(sentence(message), ERROR_COLOR)
        self.show_status()

    # -- following the project --------------------------------------------------------------

    def _on_project_config_changed(self, _config: object) -> None:
        self.sync_from_config()

    def sync_from_config(self) -> None:
        """Show the config's weights choice (writing nothing back)."""
        model = self._project.config.model
        spec = model.weights
        self._syncing = True
        try:
            choice = SCRATCH if spec == "none" else LOCAL if is_weights_file(spec) else PRETRAINED
            if self._awaiting_file and choice != LOCAL:
                choice = LOCAL  # keep the user's "Local file…" until a file is chosen
            with QSignalBlocker(self._group):
                self._group.button(choice).setChecked(True)
            if is_weights_file(spec) and not self._path_edit.hasFocus():
                with QSignalBlocker(self._path_edit):
                    self._path_edit.setText(spec)
            self._path_edit.setEnabled(choice == LOCAL)
            self._path_button.setEnabled(choice == LOCAL)
        finally:
            self._syncing = False
        key = (model.backbone, spec)
        if key != self._shown_key and self._shown_key is not None:
            self._set_note("", None)  # the last download's news was about other weights
        self._shown_key = key
        self.show_status()

    def pretrained_weights(self) -> Any | None:
        """The pretrained weights enum member the config asks for, or None."""
        config = self._project.config.model
        if self._awaiting_file or config.weights == "none" or is_weights_file(config.weights):
            return None
        try:
            return resolve_weights(config.backbone, config.weights)
        except (StudioError, ValueError):
            return None

    def show_status(self) -> None:
        """The line under the choice: cached or not, and where the file goes."""
        config = self._project.config
        name, spec = config.model.backbone, config.model.weights
        try:
            info = backbone_info(name)
        except StudioError as error:
            self._set_status(sentence(str(error)), ERROR_COLOR)
        else:
            if self._awaiting_file and not is_weights_file(spec):
                self._set_status("Choose a .safetensors, .pth or .pt file to start from.", None)
            elif spec == "none":
                self._set_status("The backbone starts from random weights: expect to need "
                                 "many more images and epochs than with pretrained weights.",
                                 MUTED_COLOR)
            elif is_weights_file(spec):
                self._set_status(*_local_file_status(spec))
            else:
                self._set_status(*_pretrained_status(info, spec))
        self._show_actions()

    def _show_actions(self) -> None:
        weights = self.pretrained_weights()
        downloading = self.downloads.is_running
        busy = downloading or self._importer.running
        missing = weights is not None and not pretrained_available(weights) \
            and not isinstance(weights, TimmWeights)  # timm fetches its own when training
        self._download_button.setVisible(missing and not (
            downloading and self.downloads.weights is weights))
        self._download_button.setEnabled(not busy)
        self._download_button.setToolTip(
            "Another download or import is running; wait for it or cancel it" if busy else
            f"Download {weights.url} now, in the background" if weights is not None else "")
        # timm's weights live in the Hugging Face cache: a local file is "Local file…" there
        self._import_button.setVisible(weights is not None
                                       and not isinstance(weights, TimmWeights))
        self._import_button.setEnabled(not busy)
        self._progress_row.setVisible(downloading)

    def _set_status(self, text: str, color: str | None) -> None:
        self._status.setText(text)
        self._status.setStyleSheet(f"color: {color};" if color else "")

    def _set_note(self, text: str, color: str | None) -> None:
        self._note.setText(text)
        self._note.setStyleSheet(f"color: {color};" if color else "")
        self._note.setVisible(bool(text))

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self.show_status()  # a download or an import since the box was last seen


def _label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def _pretrained_status(info: BackboneInfo, spec: str) -> tuple[str, str]:
    try:
        weights = resolve_weights(info.name, spec)
    except StudioError as error:
        return sentence(str(error)), ERROR_COLOR
    if weights is None:
        return f"{info.name} has no pretrained weights; choose None or a local file.", ERROR_COLOR
    if isinstance(weights, TimmWeights):
        return _timm_status(weights)
    path = hub_cache_path(weights)
    label = "" if spec == "default" else f" {weights.name}"
    if pretrained_available(weights):
        return f"Pretrained weights{label} are cached ({path}).", OK_COLOR
    size = f" ({info.file_size_mb:.0f} MB)" if info.file_size_mb and spec == "default" else ""
    return (f"Not cached: the weights{label}{size} are downloaded when training starts, or now "
            f"with Download now (needs internet). Offline? Download {weights.url} elsewhere and "
            f"import it, or save it as {path}; or choose None."), AMBER_COLOR


def _timm_status(weights: TimmWeights) -> tuple[str, str]:
    found = timm_zoo.cached_file(weights)
    if found is not None:
        return f"Pretrained weights {weights.name} are cached ({found}).", OK_COLOR
    return (f"Not cached: timm downloads {weights.repo} from Hugging Face when training starts "
            f"(needs internet). Offline? Download that repo into {timm_zoo.hub_cache()} "
            f"elsewhere, or choose None or a local file."), AMBER_COLOR


def _local_file_status(spec: str) -> tuple[str, str]:
    path = Path(spec).expanduser()
    if path.is_dir():
        return f"{path} is a folder; choose the weights file inside it.", ERROR_COLOR
    if not path.is_file():
        return (f"Weights file {path} does not exist; choose another file, or Pretrained or "
                f"None."), ERROR_COLOR
    if path.suffix.lower() not in LOCAL_SUFFIXES:
        return (f"{path.name} is not a weights file Studio reads; use .safetensors, .pth or "
                f".pt."), ERROR_COLOR
    size = path.stat().st_size / 1e6
    return (f"Weights will be read from {path} ({size:.1f} MB); tensors that do not fit the "
            f"model, such as an old head, are skipped."), MUTED_COLOR
