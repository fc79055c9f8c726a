"""``studio --self-test``: does this install work? One small real use of each part, in seconds.

Meant for a freshly built or installed app (the PyInstaller folder, a pipx install): a bundle
that lost a data file, a hidden import or a Qt plugin fails here with a sentence, not later in
front of a user. Runs offscreen unless told otherwise, so it needs no display.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _check_torch() -> str:
    import torch

    layer = torch.nn.Linear(8, 3)
    with torch.no_grad():
        out = layer(torch.randn(4, 8))
    if out.shape != (4, 3) or not torch.isfinite(out).all():
        raise RuntimeError(f"a linear layer gave {tuple(out.shape)} values, some not finite")
    cuda = f"CUDA {torch.version.cuda}, " if torch.version.cuda else ""
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"{torch.__version__} ({cuda}{devices} GPU(s) usable): a linear layer ran forward"


def _check_torchvision() -> str:
    import torch
    import torchvision

    from studio.engine.backbones import build_model
    from studio.engine.config import ModelConfig

    built = build_model(ModelConfig(backbone="mobilenet_v3_small", weights="none"), num_classes=3)
    built.model.eval()
    with torch.no_grad():
        out = built.model(torch.randn(1, 3, 64, 64))
    if out.shape != (1, 3):
        raise RuntimeError(f"mobilenet_v3_small gave an output of shape {tuple(out.shape)}")
    return f"{torchvision.__version__}: mobilenet_v3_small built for 3 classes and ran forward"


def _export_linear(layer: object, example: object) -> tuple[bytes, str]:
    """The layer as ONNX bytes, by the exporter the app tries first, else the older one."""
    import torch

    try:
        program = torch.onnx.export(layer, (example,), dynamo=True, verbose=False,
                                    input_names=["input"], output_names=["logits"])
        return program.model_proto.SerializeToString(), "dynamo exporter"
    except Exception as error:  # noqa: BLE001 - fall back as the app's export does, and say so
        log.debug("dynamo export failed", exc_info=True)
        buffer = io.BytesIO()
        torch.onnx.export(layer, (example,), buffer, dynamo=False,
                          input_names=["input"], output_names=["logits"])
        return buffer.getvalue(), f"TorchScript-based exporter; dynamo failed: {error}"


def _check_onnxruntime() -> str:
    import warnings

    import onnxruntime
    import torch

    layer = torch.nn.Linear(8, 3).eval()
    example = torch.randn(2, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, exporter = _export_linear(layer, example)
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    with torch.no_grad():
        difference = float(abs(out - layer(example).numpy()).max())
    if difference > 1e-4:
        raise RuntimeError(f"onnxruntime and PyTorch differ by {difference:.2g}")
    return (f"{onnxruntime.__version__}: a linear layer exported ({exporter}) and run, "
            f"largest difference {difference:.1g}")


def _check_qt() -> str:
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import QSettings
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtTest import QTest

    from studio.resources import style_sheet
    from studio.ui.app import build_window, create_app

    app = create_app()
    with tempfile.TemporaryDirectory(prefix="studio-self-test-") as folder:
        # the user's own window geometry and recent projects stay untouched
        settings = QSettings(os.path.join(folder, "settings.ini"), QSettings.Format.IniFormat)
        window = build_window(settings=settings)
        window.show()  # type: ignore[attr-defined]
        try:
            if not QTest.qWaitForWindowExposed(window, 10_000):  # type: ignore[arg-type]
                raise RuntimeError("the main window was shown but never appeared")
            app.processEvents()  # type: ignore[attr-defined]
            picture = window.grab()  # type: ignore[attr-defined]
            if picture.isNull() or picture.width() < 100:
                raise RuntimeError("the main window could not be drawn")
            icon_sizes = len(app.windowIcon().availableSizes())  # type: ignore[attr-defined]
            if icon_sizes == 0:
                raise RuntimeError("the app icon could not be loaded from studio.resources")
            if app.styleSheet() != style_sheet():  # type: ignore[attr-defined]
                raise RuntimeError("the style sheet from studio.resources was not applied")
        finally:
            window.stop_and_wait()  # type: ignore[attr-defined]
            window.close()  # type: ignore[attr-defined]
            window.deleteLater()  # type: ignore[attr-defined]
            app.processEvents()  # type: ignore[attr-defined]
    return (f"PySide6 {pyside_version} on {QGuiApplication.platformName()}: the main window "
            f"opened and drew {picture.width()}×{picture.height()} pixels; icon in "
            f"{icon_sizes} sizes, style sheet applied")


CHECKS: tuple[tuple[str, Callable[[], str]], ...] = (
    ("torch", _check_torch),
    ("torchvision", _check_torchvision),
    ("onnxruntime", _check_onnxruntime),
    ("qt", _check_qt),
)


def run_self_test(write: Callable[[str], object] = print) -> int:
    """Run every check, one line each; 0 when all pass, 1 (with the failing parts named)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    started = time.perf_counter()
    failed: list[str] = []
    for name, check in CHECKS:
        began = time.perf_counter()
        try:
            detail = check()
        except Exception as error:  # noqa: BLE001 - each failure is reported, the rest still run
            log.debug("self-test %s failed", name, exc_info=True)
            failed.append(name)
            write(f"FAILED  {name:<11}  {type(error).__name__}: {error}")
            continue
        write(f"ok      {name:<11}  {detail} ({time.perf_counter() - began:.1f} s)")
    seconds = time.perf_counter() - started
    if failed:
        write(f"self-test failed: {', '.join(failed)} did not work in {seconds:.1f} s; run "
              "`studio --check` for missing libraries, `studio -v --self-test` for details.")
        return 1
    write(f"self-test passed: {len(CHECKS)} checks in {seconds:.1f} s.")
    return 0
