"""Render the Runs page with two real runs selected to ``OUT_DIR/8-runs.png`` (offscreen).

    python tools/screenshot_runs.py [OUT_DIR]    # default docs/screenshots

It trains three short runs on the bundled sample with ``studio train`` (resnet18 from scratch
at 32 px, 4 epochs: two learning rates with every layer training, one head-only), about two
minutes on the 2-core development machine, then opens the window on them, selects the two
learning rates and saves the page. resnet18 rather than mobilenet_v3_small: from scratch,
mobilenet's slow BatchNorm statistics keep its validation curves flat for the first epochs,
which would show nothing to compare. Look at the picture: a person will.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

RUNS = (  # name, extra `studio train` flags
    ("resnet18-lr0.001", ["--base-lr", "0.001"]),
    ("resnet18-lr0.003", ["--base-lr", "0.003"]),
    ("resnet18-head-lr0.01", ["--base-lr", "0.01", "--freeze-preset", "head_only"]),
)


def train_runs(root: Path) -> list[Path]:
    env = {**os.environ, "STUDIO_RUNS_DIR": str(root)}
    paths = []
    for name, flags in RUNS:
        out = root / name
        subprocess.run([sys.executable, "-m", "studio", "train", "--sample", "--backbone",
                        "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "4",
                        *flags, "--out", str(out)], check=True, env=env)
        paths.append(out)
    return paths


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="studio-runs-")) / "runs"
    root.mkdir()
    paths = train_runs(root)

    sys.path.insert(0, str(Path(__file__).parent))
    from screenshots import _settle, _wait, open_window  # the helpers of the main tool

    app, window = open_window(runs_dir=str(root))
    window.steps.setCurrentRow(window.PAGES.index("Runs"))
    panel = window.runs_panel
    _wait(app, lambda: panel.model.rowCount() == len(paths) and not panel.listing)
    panel.select_runs(paths[:2])
    _wait(app, lambda: len(panel.comparison.legend_names()) == 2)
    _settle(app)
    window.grab().save(str(out / "8-runs.png"))
    print(f"saved {out / '8-runs.png'} (runs in {root})")
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
