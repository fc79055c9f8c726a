"""`studio export`, `studio eval` and `studio predict`: thin faces on the export and
evaluation engines."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from studio.cli.common import EXIT_ERROR, EXIT_OK, Progress
from studio.engine.errors import DiskError, explain_os_error

EXPORT_FORMATS = ("onnx", "int8", "torchscript", "safetensors", "bundle")  # export.FORMATS


def add_export_parser(commands: Any) -> None:
    export = commands.add_parser(
        "export", help="export a trained run to ONNX, int8, TorchScript or safetensors, verified",
        description="Export a run's checkpoint and verify the file against PyTorch on validation "
                    "images of the run and a random batch (max logit difference, top-1 "
                    "agreement). Writes export_report.json beside the files; exits 0 only when "
                    "every file is verified.")
    export.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by studio train")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="onnx",
                        help="onnx (default), int8 (quantized ONNX), torchscript, safetensors, "
                             "or bundle: all of them with a model card and predict.py")
    export.add_argument("--out", metavar="PATH",
                        help="folder to write (default RUN_DIR/export/FORMAT), or a file name "
                             "such as model.onnx for a single format")
    export.add_argument("--checkpoint", choices=["best", "last"], default="best",
                        help="which checkpoint of the run (default best)")
    export.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default 18)")
    export.add_argument("--target-precision", type=float, default=0.95, metavar="P",
                        help="precision on validation that the unknown threshold carried in "
                             "the export aims for (default 0.95)")
    export.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from studio.engine.export import export_run

    def progress(message: str) -> None:
        print(f"{message}…", file=sys.stderr, flush=True)

    report = export_run(args.run_dir, args.format, out=args.out, checkpoint=args.checkpoint,
                        opset=args.opset, progress=progress,
                        target_precision=_target_precision(args.target_precision))
    print(format_export(report))
    return EXIT_OK if report.verified else EXIT_ERROR


def format_export(report: Any) -> str:
    """A few lines: what was exported where, and how each file was verified."""
    epoch = f", epoch {report.epoch}" if report.epoch is not None else ""
    lines = [f"Exported {report.run_dir} ({report.backbone}, {report.checkpoint} "
             f"checkpoint{epoch}) to {report.out_dir}"]
    for result in report.results:
        files = ", ".join(f.name for f in result.files)
        size = result.size_bytes / 1e6
        how = result.exporter or ""
        if result.format in ("onnx", "int8") and result.opset is not None:
            how = (f"{result.exporter} exporter" if result.format == "onnx" else how) \
                + f", opset {result.opset}"
        lines.append(f"  {result.format:<12} {files}  {size:.1f} MB  {how}")
        for attempt in result.attempts:
            kind, _, detail = attempt["outcome"].partition(": ")
            if kind == "failed":
                lines.append(f"  {'':<12} (the {attempt['exporter']} exporter failed: {detail})")
            elif kind == "mismatch":
                lines.append(f"  {'':<12} (the {attempt['exporter']} exporter's file did not "
                             f"match PyTorch: {detail})")
        state = "verified" if result.verified else "NOT verified"
        lines.append(f"  {'':<12} {state}: {result.message}")
    lines.append(f"Images: {report.dataset_note}.")
    lines.append(f"Report: {report.report_path}")
    return "\n".join(lines)


def add_eval_parsers(commands: Any) -> None:
    evaluate = commands.add_parser(
        "eval", help="evaluate a trained run: accuracy, per-class metrics, confusion matrix",
        description="Run a run's checkpoint over its validation split (or another folder of the "
                    "same classes, e.g. a held-out test set) and report accuracy, top-5 "
                    "accuracy, per-class precision/recall/F1, the confusion matrix, the most "
                    "confused classes and the top losses.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by studio train")
    evaluate.add_argument("--data", metavar="DIR",
                          help="evaluate this folder instead (its test/ split if it has one, "
                               "else all its images); classes are matched by name")
    evaluate.add_argument("--split", choices=["auto", "val", "test", "train", "all"],
                          default="auto", help="which images of the folder (default: val of "
                                               "the run's own data, test or all of --data)")
    evaluate.add_argument("--checkpoint", choices=["best", "last"], default="best",
                          help="which checkpoint of the run (default best)")
    evaluate.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    evaluate.add_argument("--target-precision", type=float, default=0.95, metavar="P",
                          help="precision the unknown threshold aims for on these images "
                               "(default 0.95)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=_cmd_eval)

    predict = commands.add_parser(
        "predict", help="classify image files with a trained run",
        description="Print the most likely classes of each image, using the run's own "
                    "preprocessing. Exits 1 if any image could not be read.")
    predict.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by studio train")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    predict.add_argument("--top", type=int, default=3, metavar="K",
                         help="how many classes per image (default 3)")
    predict.add_argument("--checkpoint", choices=["best", "last"], default="best",
                         help="which checkpoint of the run (default best)")
    predict.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    predict.add_argument("--json", action="store_true", help="print one JSON object")
    predict.add_argument("--cam", metavar="OUT_DIR",
                         help="also write a Grad-CAM overlay of each image to OUT_DIR "
                              "(IMAGE-CLASS-cam.png, with cam.json listing them; needs "
                              "pip install 'finetune-studio[explain]')")
    predict.add_argument("--cam-class", choices=["predicted", "true"], default="predicted",
                         help="the class the map explains: predicted (default), or true: the "
                              "image's parent folder when it is a class of the run")
    predict.add_argument("--cam-opacity", type=float, default=0.5, metavar="A",
                         help="how strongly the map covers the image, 0 to 1 (default 0.5)")
    predict.set_defaults(handler=_cmd_predict)


def _cmd_eval(args: argparse.Namespace) -> int:
    from studio.engine.evaluate import evaluate_run

    evaluation = evaluate_run(args.run_dir, data=args.data, checkpoint=args.checkpoint,
                              split=args.split, device=args.device,
                              progress=None if args.json else Progress("evaluating"),
                              target_precision=_target_precision(args.target_precision))
    if args.json:
        print(json.dumps(evaluation.to_json(), indent=2, ensure_ascii=False))
    else:
        print(evaluation.report())
    return EXIT_OK


def _target_precision(value: float) -> float:
    from studio.engine.config import ConfigError

    if not 0.0 < value <= 1.0:
        raise ConfigError(f"--target-precision must be above 0 and at most 1; got {value:g}")
    return value


def _cmd_predict(args: argparse.Namespace) -> int:
    from studio.engine.config import ConfigError
    from studio.engine.errors import DatasetError
    from studio.engine.evaluate import Predictor

    if args.top < 1:
        raise ConfigError(f"--top must be at least 1; got {args.top}")
    if not 0.0 <= args.cam_opacity <= 1.0:
        raise ConfigError(f"--cam-opacity must be between 0 and 1; got {args.cam_opacity}")
    if args.cam is not None:
        from studio.engine.cam import require_grad_cam

        require_grad_cam()  # before the model loads: say what to install at once
    predictor = Predictor(args.run_dir, checkpoint=args.checkpoint, device=args.device)
    cams = CamWriter(predictor, args.cam, args.cam_class, args.cam_opacity) if args.cam else None
    results, failed = [], 0
    for path in args.images:
        try:
            prediction = predictor.predict(path, k=args.top)
            entry = prediction.to_json()
            if cams is not None:
                entry["cam"] = cams.write(path)
        except DatasetError as error:
            failed += 1
            print(f"error: {error}", file=sys.stderr)
            results.append({"path": path, "error": str(error)})
            continue
        results.append(entry)
        if not args.json:
            ranked = "  ".join(f"{name} {probability:.1%}" for name, probability in prediction.top)
            print(f"{path}: {ranked}")
    if cams is not None:
        cams.finish()
        if not args.json:
            print(f"Class-activation maps: {cams.written} in {cams.out_dir}")
    if args.json:
        print(json.dumps({"labels": predictor.labels, "predictions": results}, indent=2,
                         ensure_ascii=False))
    return EXIT_ERROR if failed else EXIT_OK


class CamWriter:
    """``studio predict --cam``: one overlay PNG per image, and cam.json saying which class each
    map explains. The true class is the image's parent folder, when that is a class."""

    def __init__(self, predictor: Any, out_dir: str, which: str, opacity: float) -> None:
        from studio.engine.cam import Explainer

        self.explainer = Explainer(predictor)
        self.out_dir = Path(out_dir)
        self.which, self.opacity = which, opacity
        self.entries: list[dict[str, Any]] = []
        self.written = 0
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DiskError(f"the folder {self.out_dir} cannot be created "
                            f"({explain_os_error(error)[0]}); choose another --cam folder"
                            ) from error

    def write(self, path: str) -> dict[str, Any] | None:
        """The map of one image, written; None (and a note) when its true class is unknown."""
        class_name = None
        if self.which == "true":
            class_name = Path(path).parent.name
            if class_name not in self.explainer.labels:
                print(f"note: {path} is in no folder named after a class of the run, so no map "
                      f"of its true class is written", file=sys.stderr)
                return None
        explanation = self.explainer.explain(path, class_name)
        name = self._free_name(f"{Path(path).stem}-{_safe(explanation.label)}-cam.png")
        target = self.out_dir / name
        _save_png(explanation.overlay(self.opacity), target)
        entry = {**explanation.to_json(), "explains": self.which, "file": name}
        self.entries.append(entry)
        self.written += 1
        return entry

    def finish(self) -> None:
        from studio.engine.config_io import atomic_write_text

        atomic_write_text(self.out_dir / "cam.json",
                          json.dumps({"opacity": self.opacity, "maps": self.entries}, indent=2,
                                     ensure_ascii=False) + "\n")

    def _free_name(self, name: str) -> str:
        """Two images of one stem (a/x.png, b/x.png) do not overwrite each other's map."""
        taken = {entry["file"] for entry in self.entries}
        stem, n, candidate = name[:-len("-cam.png")], 1, name
        while candidate in taken:
            n += 1
            candidate = f"{stem}-{n}-cam.png"
        return candidate


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _save_png(pixels: Any, target: Path) -> None:
    """Written atomically: a temporary file beside it, then renamed."""
    import os
    import tempfile

    from PIL import Image

    handle, temporary = tempfile.mkstemp(suffix=".png", dir=target.parent)
    os.close(handle)
    try:
        Image.fromarray(pixels, "RGB").save(temporary, format="PNG")
        os.replace(temporary, target)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise DiskError(f"{target} cannot be written ({explain_os_error(error)[0]}); choose "
                        f"another --cam folder") from error
