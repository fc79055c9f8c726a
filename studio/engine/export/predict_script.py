#!/usr/bin/env python3
"""Classify image files with model.onnx: onnxruntime, Pillow and numpy only.

    python predict.py IMAGE [IMAGE ...] [--model model.onnx] [--top 3] [--json] [--show-class]

The class names, the preprocessing (resize the short side, centre-crop, scale to 0-1, normalise,
RGB, NCHW) and the calibration (a temperature that divides the logits, and an "unknown"
threshold on the calibrated top probability, both fitted on validation) are read from the
model's metadata, as Finetune Studio wrote them. Below the threshold the answer is "unknown";
``--show-class`` names the top class anyway.

Finetune Studio copies this file verbatim into every bundle. Its pixel pipeline mirrors
studio/engine/images.py (load_image, to_rgb, PadToAspect and the eval transforms), and a test
checks that both give the same arrays on 16-bit, float, CMYK, palette and grayscale images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, as in training
MAX_ASPECT = 4.0  # more elongated images are padded to this aspect first, as in training
FILTERS = {"nearest": Image.NEAREST, "nearest-exact": Image.NEAREST,
           "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "box": Image.BOX,
           "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}
UNKNOWN = "unknown"


def load_rgb(path):
    """Any image as 8-bit RGB: EXIF-rotated, transparency on white, 16-bit/float scaled."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def to_rgb(image):
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return scale_to_8bit(image).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    elif mode in ("L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def scale_to_8bit(image):
    """16-bit maps 65535 to 255 (also when every value is below 256); float images in 0-1 are
    scaled by 255, other float and wider integer images by their own range."""
    array = np.asarray(image)
    if image.mode == "F":
        array = np.nan_to_num(array.astype(np.float64))
        low, high = float(array.min()), float(array.max())
        if 0.0 <= low and high <= 1.0:
            scaled = array * 255.0
        else:
            scaled = (array - low) / max(high - low, 1e-12) * 255.0
    else:
        array = array.astype(np.float64)
        if array.max(initial=0) <= 65535 and array.min(initial=0) >= 0:
            scaled = array / 257.0
        else:
            low, high = float(array.min()), float(array.max())
            scaled = (array - low) / max(high - low, 1e-12) * 255.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


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
    array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    array = (array - np.asarray(prep["mean"], np.float32)) / np.asarray(prep["std"], np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None], dtype=np.float32)


def probabilities(logits, temperature=1.0):
    """Softmax of logits / temperature, in float64."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    exp = np.exp(scaled - scaled.max())
    return exp / exp.sum()


def answer(probs, labels, threshold, top, show_class):
    """One image's answer: the top class, or "unknown" below the threshold."""
    order = np.argsort(-probs, kind="stable")[: max(1, top)]
    best = int(order[0])
    unsure = threshold is not None and probs[best] < threshold
    return {"answer": UNKNOWN if unsure and not show_class else labels[best],
            "class": labels[best], "unknown": bool(unsure),
            "top": [{"label": labels[i], "probability": float(probs[i])} for i in order]}


def main(argv=None):
    import onnxruntime as ort  # here, so that the pixel functions import without it

    parser = argparse.ArgumentParser(description="Classify images with an exported model.")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--model", default=os.path.join(HERE, "model.onnx"))
    parser.add_argument("--top", type=int, default=3, help="how many classes to show")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("--show-class", action="store_true",
                        help="name the top class even below the unknown threshold")
    args = parser.parse_args(argv)

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    labels = json.loads(meta["labels"])
    prep = json.loads(meta["preprocessing"])
    calibration = json.loads(meta.get("calibration", "{}"))
    temperature = float(calibration.get("temperature") or 1.0)
    threshold = calibration.get("unknown_threshold")
    failed = 0
    for path in args.images:
        try:
            batch = preprocess(load_rgb(path), prep)
        except (OSError, ValueError) as error:
            failed += 1
            print(f"error: {path} cannot be read as an image ({error})", file=sys.stderr)
            continue
        logits = session.run(["logits"], {"input": batch})[0][0]
        result = answer(probabilities(logits, temperature), labels, threshold, args.top,
                        args.show_class)
        if args.json:
            print(json.dumps({"image": path, "temperature": temperature,
                              "unknown_threshold": threshold, **result}))
            continue
        if len(args.images) > 1:
            print(path)
        if result["unknown"]:
            print(f"{UNKNOWN}\t(top probability below {threshold:.4f}"
                  + ("; shown anyway)" if args.show_class else "; --show-class names it)"))
            if not args.show_class:
                continue
        for item in result["top"]:
            print(f"{item['label']}\t{item['probability']:.4f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
