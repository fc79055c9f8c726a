"""What a user meets first: safe dependency floors, and config mistakes told before torch loads."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# torch.load(weights_only=True) could still run code below 2.10 (CVE-2025-32434, CVE-2026-24747)
SAFE_TORCH = Version("2.10")


def _floors() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    floors = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                floors[requirement.name] = Version(spec.version)
    return floors


def test_the_declared_torch_floor_excludes_the_unsafe_releases() -> None:
    floors = _floors()
    assert floors["torch"] >= SAFE_TORCH
    assert floors["torchvision"] >= Version("0.25")
    assert floors["onnx"] >= Version("1.17") and floors["onnxruntime"] >= Version("1.20")


def test_the_installed_libraries_meet_the_declared_floors() -> None:
    for name, floor in _floors().items():
        if name.startswith("pyside6"):
            continue  # one of two markers applies; pip already enforced it
        installed = Version(metadata.version(name))
        assert installed.release >= floor.release, f"{name} {installed} is below {floor}"


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_a_bad_config_is_told_before_torch_is_imported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3\n", encoding="utf-8")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("schema_version = 1\n[train]\nepochs = -2\n", encoding="utf-8")
    code = ("import sys\nfrom studio.cli import main\n"
            f"codes = [main(['train', '--config', {str(bad)!r}]),\n"
            f"         main(['train', '--config', {str(wrong)!r}, '--sample'])]\n"
            "print(codes, 'torch' in sys.modules)")
    done = _run(code)
    assert done.stdout.split() == ["[1,", "1]", "False"], done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and "bad.toml is not valid TOML" in lines[0]
    assert "epochs" in lines[1] and "Traceback" not in done.stderr
