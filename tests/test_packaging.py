"""What a user installs: the wheel carries the sample, the icons and the style sheet, and an
installed copy finds them through importlib.resources, away from the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from PIL import Image

import studio
from studio.resources import ICON_SIZES, icon_path, icon_svg, sample_dataset, style_sheet

ROOT = Path(studio.__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """The package list is explicit (for the resources mapping); a new subpackage missing from
    it would be left out of the wheel without a word."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "studio").rglob(
        "__init__.py") if "__pycache__" not in p.parts}
    assert on_disk | {"studio.resources"} == listed
    assert config["tool"]["setuptools"]["package-dir"] == {"studio.resources": "resources"}


def test_resources_are_where_the_helpers_say() -> None:
    assert len(list(sample_dataset().rglob("*.png"))) == 300
    assert (sample_dataset() / "PROVENANCE.md").is_file()
    assert icon_svg().read_text(encoding="utf-8").lstrip().startswith("<?xml")
    for size in ICON_SIZES:
        with Image.open(icon_path(size)) as image:
            assert image.size == (size, size) and image.mode == "RGBA"
    assert "QListWidget#steps" in style_sheet()
    with pytest.raises(ValueError, match="there is no 20 px app icon; the sizes are 16, 32"):
        icon_path(20)


def _copy_project(dest: Path) -> Path:
    """The files a wheel is built from, copied so the build writes nothing into the checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("studio", "resources"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    return dest


def test_wheel_ships_the_resources_and_an_installed_copy_finds_them(tmp_path: Path) -> None:
    project = _copy_project(tmp_path / "project")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(project)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("finetune_studio-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    digits = [n for n in names if n.startswith("studio/resources/sample_digits/")
              and n.endswith(".png")]
    assert len(digits) == 300
    assert {"studio/resources/__init__.py", "studio/resources/sample_digits/PROVENANCE.md",
            "studio/resources/style.qss", "studio/resources/icons/finetune-studio.svg",
            "studio/cli/__init__.py", "studio/engine/export/__init__.py",
            "studio/engine/export/predict_script.py"} <= names  # the bundle's predict.py
    assert {f"studio/resources/icons/finetune-studio-{s}.png" for s in ICON_SIZES} <= names
    assert not [n for n in names if n.startswith("resources/")], "a top-level package leaked"

    target = tmp_path / "target"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=120)
    code = (
        "import importlib.resources as ir, studio.resources as r\n"
        "sample = ir.files('studio.resources') / 'sample_digits'\n"
        "print(r.__file__)\n"
        "print(sum(1 for c in sample.iterdir() if c.is_dir() for f in c.iterdir()))\n"
        "print((sample / 'PROVENANCE.md').is_file(), r.icon_path(512).is_file(),\n"
        "      r.sample_dataset().is_dir(), len(r.style_sheet()) > 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    location, images, flags = result.stdout.splitlines()
    assert Path(location).is_relative_to(target)
    assert images == "300"
    assert flags == "True True True True"


def test_desktop_entry_runs_studio_with_the_app_icon() -> None:
    import configparser

    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # type: ignore[assignment,method-assign] - keys are case-sensitive
    entry.read(ROOT / "packaging" / "linux" / "finetune-studio.desktop", encoding="utf-8")
    desktop = entry["Desktop Entry"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"]
    assert desktop["Type"] == "Application" and desktop["Name"] == "Finetune Studio"
    assert desktop["Exec"].split()[0] in scripts
    assert desktop["Icon"] == "finetune-studio" == icon_svg().stem
    assert {"Science", "Development", "Graphics"} <= set(desktop["Categories"].split(";"))


@pytest.mark.skipif(shutil.which("sh") is None, reason="a POSIX shell")
def test_install_desktop_entry_puts_menu_entry_and_icons_in_the_home(tmp_path: Path) -> None:
    script = ROOT / "packaging" / "linux" / "install-desktop-entry.sh"
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("XDG_DATA_HOME", None)
    subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True, timeout=60)
    data = tmp_path / ".local" / "share"
    assert (data / "applications" / "finetune-studio.desktop").is_file()
    for size in ICON_SIZES:
        installed = data / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "finetune-studio.png"
        assert installed.read_bytes() == icon_path(size).read_bytes()
    subprocess.run(["sh", str(script), "--uninstall"], env=env, check=True, capture_output=True,
                   timeout=60)
    assert not list(data.rglob("finetune-studio*"))


def test_the_frozen_app_accepts_how_training_processes_are_started() -> None:
    """Frozen, sys.executable is the app; `python -u -m studio train …` must reach train."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("launcher", ROOT / "packaging" / "launcher.py")
    assert spec is not None and spec.loader is not None
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    drop = launcher.drop_interpreter_arguments
    assert drop(["-m", "studio", "train", "--config", "run.toml"]) == (
        ["train", "--config", "run.toml"], False)
    assert drop(["-u", "-m", "studio", "train"]) == (["train"], True)
    assert drop(["--self-test"]) == (["--self-test"], False)
    assert drop(["-m", "torch.distributed.run"]) == (["-m", "torch.distributed.run"], False)
