"""Render the Layers page during a real run, with its live learning columns, to
``OUT_DIR/3b-layers-live-learning.png`` and ``OUT_DIR/layers-live-learning.png`` (offscreen).

    python tools/screenshot_learning.py [OUT_DIR]    # default docs/screenshots

It opens the demo (bundled sample, resnet18 at 64 px), freezes everything up to ``layer2``,
gives ``layer3`` a learning rate of 1e-6 (a group that barely learns, so the amber cue shows)
and starts training; once the run has taken a few optimizer steps it opens ``layer3`` and
``layer4.1`` on the Layers page, saves the window and the tree alone, and stops the run. About
a minute on the 2-core development machine. Look at the pictures: a person will.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's studio

STEPS = 6  # optimizer steps before the picture: the figures have settled a little


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    from studio.engine.config import FreezeSpec, ParamGroupSpec

    sys.path.insert(0, str(Path(__file__).parent))
    from screenshots import _settle, _wait, open_window  # the helpers of the main tool

    app, window = open_window()
    project = window.project
    project.set_freeze(FreezeSpec(preset="up_to", up_to="layer2"))
    project.set_groups([ParamGroupSpec("layer3", ("layer3",), 1e-6)])
    project.update("train", epochs=2)
    _wait(app, lambda: not window._describer.running, 120)  # the Train button would refuse
    window.training_panel.train_requested.emit()
    if not window.session.is_running:
        raise SystemExit(f"training did not start: {window.training_panel.error_label.text()}")
    panel = window.layers_panel
    _wait(app, lambda: (panel.model.learning_step or 0) >= STEPS, 600)
    window.steps.setCurrentRow(window.PAGES.index("Layers"))
    tree, proxy, model = panel.tree, panel.proxy, panel.model
    for name in ("layer3", "layer4", "layer4.1"):
        tree.expand(proxy.mapFromSource(model.index_of(name)))
    tree.setCurrentIndex(proxy.mapFromSource(model.index_of("layer4.1.conv2.weight")))
    _settle(app)
    window.grab().save(str(out / "3b-layers-live-learning.png"))
    panel.grab().save(str(out / "layers-live-learning.png"))
    print(f"saved {out / 'layers-live-learning.png'} at step {model.learning_step}")
    window.stop_and_wait()
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
