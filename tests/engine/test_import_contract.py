"""Dependencies point one way: the engine never imports Qt (house style, principle 1); and a
training run loads only what training needs."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import studio.engine


def test_engine_modules_load_no_qt() -> None:
    modules = [f"studio.engine.{m.name}" for m in pkgutil.iter_modules(studio.engine.__path__)]
    assert "studio.engine.data" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "", f"engine imported Qt: {result.stdout}"


def test_training_loads_nothing_beyond_torch_and_torchvision(tiny_dataset: Path,
                                                            tmp_path: Path) -> None:
    """A run imports torch, torchvision and the engine's training modules; ONNX, onnxruntime,
    safetensors, export and evaluation load when they are used, not on every run's start."""
    code = (
        "import sys\n"
        "from studio.cli import main\n"
        f"code = main(['train', '--data', {str(tiny_dataset)!r}, '--out', "
        f"{str(tmp_path / 'run')!r}, '--backbone', 'mobilenet_v3_small', '--weights', 'none', "
        "'--image-size', '32', '--epochs', '1', '--device', 'cpu', '--workers', '0'])\n"
        "late = ('onnx', 'onnxruntime', 'onnxscript', 'safetensors', 'PySide6', 'pyqtgraph',\n"
        "        'studio.engine.export', 'studio.engine.evaluate', 'studio.ui')\n"
        "print(code, ','.join(sorted(m for m in sys.modules if m.startswith(late))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=True)
    assert result.stdout.split(" ", 1) == ["0", "\n"], result.stdout + result.stderr
