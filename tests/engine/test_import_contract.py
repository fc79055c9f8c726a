"""Dependencies point one way: the engine never imports Qt (house style, principle 1); and a
training run loads only what training needs."""

from __future__ import annotations

import importlib.util
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
    safetensors, export and evaluation load when they are used, not on every run's start.
    TensorBoard loads only when its event files are on (then evaluation draws the confusion
    matrix at the end); with --no-tensorboard it is never imported."""
    code = (
        "import sys\n"
        "from studio.cli import main\n"
        "def train(out, *more):\n"
        f"    return main(['train', '--data', {str(tiny_dataset)!r}, '--out', out,\n"
        "                 '--backbone', 'mobilenet_v3_small', '--weights', 'none',\n"
        "                 '--image-size', '32', '--epochs', '1', '--device', 'cpu',\n"
        "                 '--workers', '0', *more])\n"
        "def loaded(late):\n"
        "    return ','.join(sorted(m for m in sys.modules if m.startswith(late)))\n"
        "late = ('onnx', 'onnxruntime', 'onnxscript', 'safetensors', 'PySide6', 'pyqtgraph',\n"
        "        'studio.engine.export', 'studio.ui')\n"
        f"code = train({str(tmp_path / 'off')!r}, '--no-tensorboard')\n"
        "print(code, loaded(late + ('studio.engine.evaluate', 'tensorboard',\n"
        "                           'torch.utils.tensorboard')))\n"
        f"code = train({str(tmp_path / 'on')!r})\n"
        "print(code, loaded(late))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=True)
    assert result.stdout.split("\n") == ["0 ", "0 ", ""], result.stdout + result.stderr
    assert not (tmp_path / "off" / "tensorboard").exists()
    if importlib.util.find_spec("tensorboard") is not None:
        assert any((tmp_path / "on" / "tensorboard").glob("events.out.tfevents.*"))
