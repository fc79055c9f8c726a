"""Render the Dataset page's Check tab with findings to ``OUT_DIR/1b-dataset-check.png``.

    python tools/screenshot_doctor.py [OUT_DIR]    # default docs/screenshots

It writes a small train/ + val/ folder of tinted textures (red, green, blue), plants an exact
duplicate, a near-duplicate (a resized JPEG), a leak (the same file in train/ and val/), a
conflict (one file in two classes), a tiny and an elongated image and two red images filed as
green in val/, trains a short run on it (resnet18 from scratch at 32 px, 4 epochs, about a
minute on 2 cores), then opens the window on the folder, runs the check with the run's
label errors and relabels one of them. Look at the picture: a person will.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's studio, not an installed one

COLOURS = {"red": (1.0, 0.25, 0.2), "green": (0.25, 1.0, 0.3), "blue": (0.2, 0.35, 1.0)}


def texture(seed: int, colour: tuple[float, float, float], size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    grid = rng.integers(60, 256, (8, 8), dtype=np.uint8)
    grey = np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC))
    rgb = np.stack([grey * c for c in colour], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


def write_dataset(root: Path) -> Path:
    seed = 0
    for split, count in (("train", 14), ("val", 5)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                seed += 1
                texture(seed, colour).save(folder / f"{name}_{i:02d}.png")
    train, val = root / "train", root / "val"
    shutil.copyfile(train / "red/red_03.png", train / "red/red_03 copy.png")
    texture(900, COLOURS["blue"]).save(train / "blue/sky.png")
    texture(900, COLOURS["blue"]).resize((64, 64)).save(train / "blue/sky_small.jpg", quality=85)
    shutil.copyfile(train / "green/green_05.png", val / "green/green_05.png")
    shutil.copyfile(train / "blue/blue_02.png", train / "green/blue_02.png")
    texture(901, COLOURS["red"], size=20).save(train / "red/thumb.png")
    texture(902, COLOURS["green"]).resize((400, 60)).save(train / "green/banner.png")
    for k in range(2):
        texture(950 + k, COLOURS["red"]).save(val / f"green/photo_{k}.png")  # mislabelled
    return root


def train_run(data: Path, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "studio", "train", "--data", str(data), "--backbone",
                    "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "4",
                    "--batch-size", "8", "--device", "cpu", "--out", str(out)], check=True,
                   env={**os.environ, "STUDIO_RUNS_DIR": str(out.parent)}, cwd=ROOT)
    return out


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="studio-doctor-shot-"))
    data = write_dataset(work / "colours")
    run = train_run(data, work / "runs" / "resnet18-colours")

    sys.path.insert(0, str(Path(__file__).parent))
    from screenshots import _settle, _wait, open_window  # the helpers of the main tool

    app, window = open_window(demo=False, height=900)
    panel = window.dataset_panel
    panel.load_folder(str(data))
    _wait(app, lambda: window.project.scan is not None)
    panel.set_doctor_run(str(run))
    view = panel.doctor_view
    tabs = panel.findChild(object, "details_tabs")
    tabs.setCurrentWidget(view)
    reports: list[object] = []
    view.check_finished.connect(reports.append)
    view.start_check()
    _wait(app, lambda: bool(reports), 300)
    tree = view.findChild(object, "findings_tree")
    splitter = tabs.parentWidget()
    splitter.setSizes([260, 640])  # room for the findings
    _settle(app, 60)
    # relabel the first suspected label error, as a user would
    issues = tree.topLevelItem(2)
    if issues.childCount():
        issues.child(0).setSelected(True)
        suggested = reports[0].suspected_label_errors[0].suggested  # type: ignore[attr-defined]
        view.relabel_selected(suggested)
        _wait(app, lambda: not panel.findChild(object, "scan_progress").isVisible(), 60)
    tree.clearSelection()
    tree.topLevelItem(1).child(0).child(0).setSelected(True)
    _settle(app, 60)
    window.grab().save(str(out / "1b-dataset-check.png"))
    print(f"saved {out / '1b-dataset-check.png'} (data in {data})")
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
