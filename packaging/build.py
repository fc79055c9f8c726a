"""Build the one-folder desktop app for this OS with PyInstaller, then prove it starts.

    python packaging/build.py [--slim] [--no-self-test]

1. builds the project's wheel and installs it (no dependencies) into ``build/packaging/site``,
   so the app is frozen from what a user installs, with ``resources/`` mapped to
   ``studio.resources`` exactly as in the wheel;
2. runs PyInstaller with ``packaging/studio.spec`` into ``dist/finetune-studio/``;
3. prints the time taken and the folder's size, then runs the built app's ``--self-test``.

Not part of the test suite: it takes minutes and writes gigabytes (PyTorch with CUDA).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "packaging"
DIST = ROOT / "dist"
APP = DIST / "finetune-studio"


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (links not followed, as ``du`` counts them)."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size:.0f} B"
        size /= 1024
    return f"{size:.1f} GB"


def run(command: list[str], **kwargs: object) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def install_wheel(site: Path) -> None:
    """The project as a user gets it, without dependencies (the build's own env has them)."""
    wheels = BUILD / "wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    shutil.rmtree(site, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        cwd=BUILD)
    (wheel,) = wheels.glob("finetune_studio-*.whl")
    run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)])


def self_test(executable: Path) -> int:
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    began = time.perf_counter()
    result = subprocess.run([str(executable), "--self-test"], env=env, cwd=BUILD,
                            capture_output=True, text=True, timeout=600)
    print(result.stdout, end="")
    if result.returncode != 0:
        print(result.stderr[-4000:], end="", file=sys.stderr)
    print(f"built app's --self-test: exit {result.returncode} after "
          f"{time.perf_counter() - began:.1f} s (first start included)")
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slim", action="store_true",
                        help="leave out the CUDA libraries and triton a CPU-only app never loads")
    parser.add_argument("--no-self-test", action="store_true", help="build only")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("PyInstaller") is None:
        print("error: PyInstaller is not installed; install it with `pip install pyinstaller`.",
              file=sys.stderr)
        return 1

    BUILD.mkdir(parents=True, exist_ok=True)
    site = BUILD / "site"
    started = time.perf_counter()
    install_wheel(site)
    env = {**os.environ, "STUDIO_BUILD_SITE": str(site), "STUDIO_SLIM": "1" if args.slim else "0",
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    # run from build/, never the checkout: there the source studio/ (without resources) would
    # shadow the installed copy
    run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
         "--distpath", str(DIST), "--workpath", str(BUILD / "work"),
         str(ROOT / "packaging" / "studio.spec")], cwd=BUILD, env=env)
    seconds = time.perf_counter() - started
    size = folder_size(APP)
    files = sum(1 for p in APP.rglob("*") if p.is_file())
    print(f"\nbuilt {APP.relative_to(ROOT)}/ in {seconds / 60:.1f} min ({seconds:.0f} s): "
          f"{human(size)} in {files} files{' (slim)' if args.slim else ''}; "
          f"{platform.system()} {platform.machine()}, Python {platform.python_version()}")
    if args.no_self_test:
        return 0
    executable = APP / ("studio.exe" if sys.platform == "win32" else "studio")
    return self_test(executable)


if __name__ == "__main__":
    raise SystemExit(main())
