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
    """The bundled sample, a small backbone, ready to Train on a CPU in about a minute.

    No random augmentation: five epochs on a small sample gain little from it, and without it
    "Train head only" runs the frozen backbone once per image and trains on the cached
    features, which is what the demo should show (augmented images would need fresh features
    every epoch)."""
    from studio.engine.backbones import pretrained_available, resolve_weights
    from studio.engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from studio.resources import sample_dataset

    pretrained = pretrained_available(resolve_weights("resnet18", "default"))
    return RunConfig(
        data=DataConfig(root=str(sample_dataset()), image_size=64, augment="none"),
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


def _report_uncaught(state: dict[str, object]) -> None:
    """An exception that escapes a slot or a thread is a bug: its traceback goes to the log
    file; the terminal and the window's status bar get one sentence naming that file."""
    import threading

    from studio.engine.logs import log_unexpected

    def tell(error: BaseException) -> None:
        message = log_unexpected(log, "the app hit an error", error)
        print(f"error: {message}", file=sys.stderr)
        window = state.get("window")
        if window is not None:
            window.statusBar().showMessage(message, 20_000)  # type: ignore[attr-defined]

    def hook(kind: type[BaseException], error: BaseException, trace: object) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, error, trace)  # type: ignore[arg-type]
            return
        tell(error.with_traceback(trace))  # type: ignore[arg-type]

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            message = log_unexpected(log, f"thread {args.thread.name if args.thread else '?'} "
                                          f"failed", args.exc_value)
            print(f"error: {message}", file=sys.stderr)

    sys.excepthook = hook
    threading.excepthook = thread_hook


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
    state: dict[str, object] = {}
    _report_uncaught(state)
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
