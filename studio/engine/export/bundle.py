"""What a bundle carries besides the model files, so that it explains and runs itself: a model
card (README.md: what the model is, how it was trained, how well, how each file was checked)
and ``predict.py``, which classifies image files with onnxruntime, Pillow and numpy alone,
preprocessing them as training did.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
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
    lines += ["", "## Calibration", "", *_calibration_lines(report.calibration)]
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


def _calibration_lines(calibration: dict[str, Any] | None) -> list[str]:
    """How far to trust the probabilities, and the unknown threshold predict.py applies."""
    if calibration is None:
        return ["Not calibrated: the run's validation images were not available at export, "
                "so predict.py shows the model's own probabilities and never answers unknown."]
    lines = [f"Fitted on {calibration['fitted_on_images']} validation images: temperature "
             f"{calibration['temperature']:.3f} (predict.py divides the logits by it), expected "
             f"calibration error (15 bins) {calibration['ece']:.3f} before and "
             f"{calibration['ece_calibrated']:.3f} after."]
    threshold = calibration.get("unknown_threshold")
    if threshold is None:
        lines.append(f"No threshold reached precision {calibration['target_precision']:.2f} on "
                     f"validation, so predict.py never answers unknown.")
    else:
        lines.append(f"predict.py answers `unknown` when the calibrated top probability is below "
                     f"{threshold:.4f} (precision {calibration['target_precision']:.2f} on "
                     f"validation, answering {100 * calibration['coverage']:.1f} % of its "
                     f"images); `--show-class` names the top class anyway. Both values are in "
                     f"`calibration.json` and the ONNX metadata (`calibration`).")
    return lines


def _floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


PREDICT_SCRIPT = Path(__file__).with_name("predict_script.py")


def predict_py() -> str:
    """The bundle's predict.py: ``predict_script.py`` of this package, verbatim."""
    return PREDICT_SCRIPT.read_text(encoding="utf-8")
