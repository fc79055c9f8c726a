"""Render the Evaluate page with class-activation maps on to ``OUT_DIR/6c-evaluate-cam.png``.

    python tools/screenshot_cam.py [OUT_DIR]     # default docs/screenshots

It trains one short run on the bundled sample with ``studio train`` (resnet18 from scratch at
128 px, 6 epochs: under a minute on the 2-core development machine; at the 32 px of the other
screenshots resnet18's last stage is a single cell, and its map would be one flat colour), then
opens the window on it, evaluates, shows the top losses with "Show CAM" on for the predicted
class, and saves the window. Needs the grad-cam package. Look at the picture: a person will.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
TOOLS = Path(__file__).resolve().parent
sys.path[:0] = [str(TOOLS.parent), str(TOOLS)]  # this checkout's studio, and screenshots.py

from screenshots import _settle, _wait, open_window  # noqa: E402 - after the platform is chosen


def train_run(root: Path) -> Path:
    out = root / "resnet18-128px"
    env = {**os.environ, "STUDIO_RUNS_DIR": str(root)}
    subprocess.run([sys.executable, "-m", "studio", "train", "--sample", "--backbone",
                    "resnet18", "--weights", "none", "--image-size", "128", "--epochs", "6",
                    "--base-lr", "0.003", "--out", str(out)], check=True, env=env, cwd=TOOLS.parent)
    return out


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    run = train_run(Path(tempfile.mkdtemp(prefix="studio-cam-runs-")))
    app, window = open_window()
    window.steps.setCurrentRow(window.PAGES.index("Evaluate"))
    panel = window.evaluate_panel
    panel.set_run_dir(str(run))
    done: list[object] = []
    panel.evaluation_finished.connect(done.append)
    panel.start_evaluation()
    _wait(app, lambda: bool(done) or not panel.evaluate_task.running, 600)
    if panel.evaluation is None:
        raise SystemExit(f"the evaluation failed: {panel.status_label.text()}")
    panel.show_top_losses()
    _wait(app, lambda: not panel.gallery_model.loading, 60)
    panel.cam_controls.opacity_slider.setValue(45)
    panel.cam_controls.show_check.setChecked(True)
    _settle(app)
    _wait(app, lambda: not panel.cam_maps.busy, 300)
    _settle(app, 60)
    _wait(app, lambda: not panel.cam_maps.busy, 300)  # the rows painted last asked last
    _settle(app)
    target = out / "6c-evaluate-cam.png"
    window.grab().save(str(target))
    print(f"saved {target}")
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
