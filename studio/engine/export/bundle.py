"""What a bundle carries besides the model files, so that it explains and runs itself: a model
card (README.md: what the model is, how it was trained, how well, how each file was checked)
and ``predict.py``, which classifies image files with onnxruntime, Pillow and numpy alone,
preprocessing them as training did.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from studio import __version__
from studio.engine.export.results import ExportReport
from studio.engine.export.verify import ATOL, RANDOM_BATCH, RTOL
from studio.engine.record import read_record
from studio.engine.runs import OpenedRun as _Run
from studio.engine.runs import epoch_records


def _best_epoch_metrics(run: _Run) -> dict[str, Any] | None:
    """The metrics.jsonl line of the best epoch, if the run folder still has it."""
    epoch = run.best.get("epoch")
    return None if epoch is None else epoch_records(run.run_dir).get(int(epoch))


def model_card(run: _Run, report: ExportReport) -> str:
    """A short README.md: what the model is, how it was trained, how well, how it was checked."""
    cfg = run.config
    prep = report.preprocessing
    best = run.best
    lines = [f"# {cfg.model.backbone} fine-tuned on {len(run.labels)} classes", "",
             f"Exported by Finetune Studio {__version__} on {time.strftime('%Y-%m-%d')} from the "
             f"{run.checkpoint} checkpoint (epoch {run.epoch}) of `{run.run_dir}`.", "",
             "## Model", "",
             f"- Backbone: `{cfg.model.backbone}` (starting weights: `{cfg.model.weights}`), "
             f"{cfg.model.head.kind} head",
             f"- Input: float32 NCHW, RGB, resize the short side to {prep['resize']} "
             f"({prep.get('interpolation', 'bilinear')}), centre-crop {prep['crop']}, scale to "
             f"0–1, normalise with mean {_floats(prep['mean'])} and std {_floats(prep['std'])}",
             "- Output: `logits`, one per class in this order:", ""]
    lines += [f"  {i}. {name}" for i, name in enumerate(run.labels)]
    lines += ["", "## Training", ""]
    metrics = _best_epoch_metrics(run)
    if best.get("metric") is not None:
        which = " (the EMA weights)" if best.get("weights") == "ema" else ""
        lines.append(f"- Best epoch {best.get('epoch')}: {cfg.train.monitor} "
                     f"{best['metric']:.4f}{which}")
    if metrics:
        keys = ["train_loss", "train_acc", "val_loss", "val_acc"]
        if best.get("weights") == "ema":  # the exported weights' own figures
            keys += ["ema_val_loss", "ema_val_acc"]
        shown = [f"{key} {metrics[key]:.4f}" for key in keys
                 if isinstance(metrics.get(key), int | float)]
        lines.append(f"- At that epoch: {', '.join(shown)}")
    if report.images_checked:
        inputs = (f"{report.dataset_note}, one image alone and a random batch of "
                  f"{RANDOM_BATCH}")
    else:
        inputs = f"one input alone and a random batch of {RANDOM_BATCH} ({report.dataset_note})"
    lines += [f"- {cfg.train.epochs} epochs planned, batch {cfg.train.batch_size}, "
              f"{cfg.optim.optimizer} at lr {cfg.optim.lr:g}, {cfg.optim.schedule} schedule, "
              f"augmentation {cfg.data.augment}, seed {cfg.train.seed}",
              "- The full training configuration is `config.toml`."]
    record = read_record(run.run_dir)
    if record is not None:
        fingerprint = record.get("dataset", {}).get("fingerprint", {})
        splits = record.get("dataset", {}).get("splits", {})
        lines += [f"- Trained with torch {record.get('torch')}, torchvision "
                  f"{record.get('torchvision')}, Python {record.get('python')} on "
                  f"{record.get('device_name') or record.get('device')} "
                  f"({record.get('precision')}), seed {record.get('seed')}"
                  f"{', deterministic' if record.get('deterministic') else ''}",
                  f"- Dataset: {', '.join(f'{n} {k}' for k, n in splits.items())} images, "
                  f"fingerprint `{str(fingerprint.get('hash', ''))[:16]}`; the full record "
                  f"(versions, command, fingerprint) is `run.json`"]
    lines += ["",
              "## Files and verification", "",
              f"Each file was run with its own runtime and compared with PyTorch on {inputs}; "
              f"fp32 tolerance rtol {RTOL:g}, atol {ATOL:g}.", "",
              "| format | file | size | made with | max abs logit diff | top-1 agreement | "
              "verified |", "|---|---|---|---|---|---|---|"]
    for result in report.results:
        parity = result.parity
        main_file = result.files[0].name if result.files else "-"
        exporter = result.exporter or "-"
        if result.format == "onnx" and result.exporter:
            exporter = f"{result.exporter} exporter, opset {result.opset}"
        lines.append(f"| {result.format} | `{main_file}` | {_size(result.size_bytes)} | "
                     f"{exporter} | "
                     f"{'-' if parity is None else f'{parity.max_abs_diff:.2g}'} | "
                     f"{'-' if parity is None else f'{100 * parity.top1_agreement:.1f} %'} | "
                     f"{'yes' if result.verified else 'NO'} |")
    int8 = next((r for r in report.results if r.format == "int8"), None)
    if int8 is not None:
        lines += ["", f"int8: {int8.message}."]
    lines += ["", "## Use", "", "```bash", "python predict.py IMAGE.jpg   # needs onnxruntime, "
              "pillow, numpy", "```", "", "```python",
              "import onnxruntime as ort",
              "session = ort.InferenceSession(\"model.onnx\")",
              "meta = session.get_modelmeta().custom_metadata_map  # labels, preprocessing (JSON)",
              "logits = session.run([\"logits\"], {\"input\": batch})[0]  # batch: N×3×H×W",
              "", "import torch",
              "model = torch.jit.load(\"model.pt\")  # TorchScript, no Finetune Studio needed",
              "```", ""]
    return "\n".join(lines)


def _floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


PREDICT_PY = '''\
#!/usr/bin/env python3
"""Classify image files with model.onnx: onnxruntime, Pillow and numpy only.

    python predict.py IMAGE [IMAGE ...] [--model model.onnx] [--top 3] [--json]

The class names and the preprocessing (resize the short side, centre-crop, scale to 0-1,
normalise, RGB, NCHW) are read from the model's metadata, as Finetune Studio wrote them.
"""

import argparse
import json
import os

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, as in training
MAX_ASPECT = 4.0  # more elongated images are padded to this aspect first, as in training
FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
           "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


def load_rgb(path):
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        array = array / 257.0 if array.max(initial=0) > 255 else array
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("P", "PA", "LA", "La", "RGBa") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def pad_to_aspect(image):
    width, height = image.size
    if max(width, height) <= MAX_ASPECT * min(width, height):
        return image
    if width > height:
        size = (width, int(np.ceil(width / MAX_ASPECT)))
    else:
        size = (int(np.ceil(height / MAX_ASPECT)), height)
    canvas = Image.new("RGB", size, BACKGROUND)
    canvas.paste(image, ((size[0] - width) // 2, (size[1] - height) // 2))
    return canvas


def preprocess(image, prep):
    """Resize the short side to prep["resize"], centre-crop prep["crop"], normalise: 1x3xHxW."""
    image = pad_to_aspect(image)
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = prep["resize"], int(prep["resize"] * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    if size != image.size:
        image = image.resize(size, FILTERS.get(prep.get("interpolation"), Image.BILINEAR))
    crop = prep["crop"]
    top = int(round((size[1] - crop) / 2.0))
    left = int(round((size[0] - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(prep["mean"], np.float32)) / np.asarray(prep["std"], np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None], dtype=np.float32)


def main():
    parser = argparse.ArgumentParser(description="Classify images with an exported model.")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--model", default=os.path.join(HERE, "model.onnx"))
    parser.add_argument("--top", type=int, default=3, help="how many classes to show")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    args = parser.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    labels = json.loads(meta["labels"])
    prep = json.loads(meta["preprocessing"])
    for path in args.images:
        logits = session.run(["logits"], {"input": preprocess(load_rgb(path), prep)})[0][0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-probs)[: max(1, args.top)]
        if args.json:
            print(json.dumps({"image": path, "top": [
                {"label": labels[i], "probability": float(probs[i])} for i in order]}))
            continue
        if len(args.images) > 1:
            print(path)
        for i in order:
            print(f"{labels[i]}\\t{probs[i]:.4f}")


if __name__ == "__main__":
    main()
'''
