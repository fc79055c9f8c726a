"""Dependencies point one way: the engine never imports Qt (house style, principle 1)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

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
