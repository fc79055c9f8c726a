"""The composition root: QApplication, style, the main window, and how it is launched."""

from __future__ import annotations

import logging
import sys

from studio.resources import ICON_SIZES, icon_path, style_sheet

log = logging.getLogger(__name__)

ORGANIZATION = "FinetuneStudio"
APPLICATION = "Finetune Studio"
DESKTOP_ENTRY = "finetune-studio"  # packaging/linux/finetune-studio.desktop


def demo_config() -> object:
    """The bundled sample, a small backbone, ready to Train on a CPU in about a minute."""
    from studio.engine.backbones import pretrained_available, resolve_weights
    from studio.engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from studio.resources import sample_dataset

    pretrained = pretrained_available(resolve_weights("resnet18", "default"))
    return RunConfig(
        data=DataConfig(root=str(sample_dataset()), image_size=64, augment="light"),
        model=ModelConfig(backbone="resnet18", weights="default" if pretrained else "none"),
        train=TrainConfig(epochs=5, batch_size=32))


def create_app(argv: list[str] | None = None) -> object:
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    if not hasattr(app, "studio_gc"):
        from pyqtgraph.util.garbage_collector import GarbageCollector

        # Cyclic GC must not run in the training or scanning threads, where it can touch Qt
        # wrappers the GUI thread is deleting (a crash): collect on a GUI timer instead.
        app.studio_gc = GarbageCollector(interval=1.0)  # type: ignore[attr-defined]
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setDesktopFileName(DESKTOP_ENTRY)  # Wayland and docks match the window to its entry
    app.setStyle("Fusion")
    app.setStyleSheet(style_sheet())
    app.setWindowIcon(app_icon())
    return app


def app_icon() -> object:
    """The app icon at every rendered size, so each window manager picks a sharp one."""
    from PySide6.QtCore import QSize
    from PySide6.QtGui import QIcon

    icon = QIcon()
    for size in ICON_SIZES:
        icon.addFile(str(icon_path(size)), QSize(size, size))
    return icon


def build_window(project_file: str | None = None, demo: bool = False,
                 settings: object | None = None) -> object:
    """The main window, with a project opened or the demo loaded."""
    from studio.ui.main_window import MainWindow

    window = MainWindow(settings=settings)  # type: ignore[arg-type]
    if project_file:
        window.open_project(project_file)
    elif demo:
        config = demo_config()
        window.project.set_config(config)  # type: ignore[arg-type]
        window.dataset_panel.load_folder(config.data.root)  # type: ignore[attr-defined]
    return window


def _import_engine() -> None:
    """The slow part of start-up (torch, torchvision: seconds), done off the GUI thread."""
    import studio.engine.backbones  # noqa: F401
    import studio.engine.trainer  # noqa: F401


def run(project_file: str | None = None, demo: bool = False) -> int:
    """Show a splash at once, import torch in a thread meanwhile, then open the window."""
    from studio.check import window_blocker

    blocker = window_blocker()  # Qt would abort with a message that names no library
    if blocker is not None:
        print(f"error: {blocker}", file=sys.stderr)
        return 1
    import threading

    from PySide6.QtCore import Qt, QTimer
    from PySide6.QtGui import QColor, QFont, QPixmap
    from PySide6.QtWidgets import QSplashScreen

    app = create_app()
    pixmap = QPixmap(460, 150)
    pixmap.fill(QColor("#2b5d8c"))
    splash = QSplashScreen(pixmap)
    font = QFont(splash.font())
    font.setPointSize(13)
    splash.setFont(font)
    splash.showMessage("Finetune Studio\n\nloading PyTorch…",
                       Qt.AlignmentFlag.AlignCenter, QColor("white"))
    splash.show()
    app.processEvents()  # type: ignore[attr-defined]

    loader = threading.Thread(target=_import_engine, name="studio-import", daemon=True)
    loader.start()
    state: dict[str, object] = {}

    def open_window() -> None:
        if loader.is_alive():
            QTimer.singleShot(30, open_window)
            return
        window = build_window(project_file, demo)
        state["window"] = window
        window.show()  # type: ignore[attr-defined]
        splash.finish(window)  # type: ignore[arg-type]

    QTimer.singleShot(0, open_window)
    return int(app.exec())  # type: ignore[attr-defined]
