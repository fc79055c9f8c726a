"""Render the Layers page with LoRA adapters to ``OUT_DIR/3c-layers-lora.png`` (the window) and
``OUT_DIR/layers-lora.png`` (the page alone), offscreen.

    python tools/screenshot_lora.py [OUT_DIR]    # default docs/screenshots

It opens the demo (the bundled sample), picks vit_b_16 at 32 px without weights, applies
"LoRA on attention", then puts the last encoder block's MLP on LoRA too from the tree, opens
that block and saves. A few seconds. Look at the pictures: a person will.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's studio

BLOCK = "encoder.layers.encoder_layer_11"


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    from PySide6.QtCore import QPersistentModelIndex

    sys.path.insert(0, str(Path(__file__).parent))
    from screenshots import _settle, _wait, open_window  # the helpers of the main tool

    app, window = open_window()
    project = window.project
    project.update("data", image_size=32)
    project.update("model", backbone="vit_b_16", weights="none")
    _wait(app, lambda: project.description is not None
          and project.description.backbone == "vit_b_16", 120)
    panel = window.layers_panel
    if not panel.lora_bar.apply_preset("attention"):
        raise SystemExit(panel.lora_bar.status_label.text())
    model = panel.model
    model.set_lora([QPersistentModelIndex(model.index_of(f"{BLOCK}.mlp"))], True)
    window.steps.setCurrentRow(window.PAGES.index("Layers"))
    tree, proxy = panel.tree, panel.proxy
    for name in ("encoder", "encoder.layers", BLOCK, f"{BLOCK}.self_attention",
                 f"{BLOCK}.mlp", f"{BLOCK}.mlp.0"):
        tree.expand(proxy.mapFromSource(model.index_of(name)))
    tree.setCurrentIndex(proxy.mapFromSource(model.index_of(f"{BLOCK}.self_attention")))
    tree.scrollTo(proxy.mapFromSource(model.index_of(f"{BLOCK}.mlp.3")))
    _settle(app)
    window.grab().save(str(out / "3c-layers-lora.png"))
    panel.grab().save(str(out / "layers-lora.png"))
    print(f"saved {out / 'layers-lora.png'}: {panel.summary_label.text()}")
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
