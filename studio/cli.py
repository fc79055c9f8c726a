"""The command line: a thin face on the engine.

``studio scan`` and ``studio models`` describe data and backbones; later subcommands train,
evaluate and export. Every error a user can cause ends in one sentence and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from studio import __version__
from studio.engine.events import Callback

log = logging.getLogger("studio")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studio", description="Finetune Studio: fine-tune torchvision image classifiers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    parser.add_argument("--demo", action="store_true",
                        help="open the app with the bundled sample dataset, ready to train")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    gui = commands.add_parser("gui", help="open the desktop app (the default command)")
    gui.add_argument("project", nargs="?", metavar="PROJECT.toml", help="a saved project")
    gui.add_argument("--demo", action="store_true", help="load the bundled sample dataset")
    gui.set_defaults(handler=_cmd_gui)

    scan = commands.add_parser("scan", help="describe a dataset folder: classes, counts, "
                                            "warnings, unreadable files")
    where = scan.add_mutually_exclusive_group(required=True)
    where.add_argument("data", nargs="?", metavar="DIR",
                       help="a folder with one subfolder per class, or train/ val/ [test/]")
    where.add_argument("--sample", action="store_true", help="scan the bundled sample dataset")
    scan.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                      help="share of each class held back for validation (class-folder layout)")
    scan.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    scan.add_argument("--json", action="store_true", help="print one JSON object")
    scan.set_defaults(handler=_cmd_scan)

    _add_train_parser(commands)
    _add_export_parser(commands)
    _add_eval_parsers(commands)

    zoo = commands.add_parser("models", help="list the torchvision backbones")
    zoo.add_argument("filter", nargs="?", default="", help="show names containing this text")
    zoo.add_argument("--json", action="store_true", help="print a JSON list")
    zoo.set_defaults(handler=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        args.handler, args.project = _cmd_gui, None
    from studio.engine.errors import StudioError

    try:
        return int(args.handler(args) or EXIT_OK)
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `studio models | head`: the reader left, which is fine
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return EXIT_OK


# ---------------------------------------------------------------------------------------------
# gui


def _cmd_gui(args: argparse.Namespace) -> int:
    from studio.ui.app import run

    return run(project_file=args.project, demo=args.demo)


# ---------------------------------------------------------------------------------------------
# scan


class _Progress:
    """A one-line progress counter on a terminal; silent otherwise."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label, self.stream = label, stream
        self.live = stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self.live:
            end = "\n" if done >= total else ""
            self.stream.write(f"\r{self.label} {done}/{total}{end}")
            self.stream.flush()


def _cmd_scan(args: argparse.Namespace) -> int:
    from studio.engine.config import ConfigError
    from studio.engine.data import scan_folder

    if not 0.0 <= args.val_fraction <= 0.9:
        raise ConfigError(f"--val-fraction must be between 0 and 0.9; got {args.val_fraction}")
    if args.sample:
        from studio.resources import sample_dataset

        root = sample_dataset()
    else:
        root = args.data
    scan = scan_folder(root, val_fraction=args.val_fraction, seed=args.seed,
                       progress=None if args.json else _Progress("verifying images"))
    if args.json:
        print(json.dumps(scan.to_json(), indent=2, ensure_ascii=False))
    else:
        print(format_scan(scan, args.val_fraction, args.seed))
    return EXIT_OK


def format_scan(scan: Any, val_fraction: float, seed: int) -> str:
    counts = scan.counts()
    splits = list(counts)
    if scan.layout == "flat":
        layout = f"class folders, split {1 - val_fraction:.0%}/{val_fraction:.0%} (seed {seed})"
    else:
        layout = "/".join(f"{s}/" for s in splits) + " folders"
    totals = {s: sum(c.values()) for s, c in counts.items()}
    lines = [f"Dataset {scan.root}", f"layout: {layout}",
             f"{len(scan.classes)} classes, {sum(totals.values())} images: "
             + ", ".join(f"{s} {totals[s]}" for s in splits), ""]
    width = max(len("class"), *(len(c) for c in scan.classes))
    lines.append(f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in splits))
    for name in scan.classes:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{counts[s][name]:>6}" for s in splits))
    if scan.warnings:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in scan.warnings]
    if scan.bad_files:
        lines += ["", f"Unreadable files ({len(scan.bad_files)}), left out:"]
        lines += [f"  {b.path}: {b.reason}" for b in scan.bad_files]
    if scan.ignored_files:
        lines += ["", f"{scan.ignored_files} hidden or non-image file(s) ignored."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# models


def _cmd_models(args: argparse.Namespace) -> int:
    from studio.engine.backbones import list_backbones

    infos = [i for i in list_backbones() if args.filter.lower() in i.name.lower()]
    if args.json:
        print(json.dumps([i.to_json() for i in infos], indent=2))
        return EXIT_OK
    header = f"{'name':<20} {'family':<18} {'params':>9} {'GFLOPs':>7} {'acc@1':>6} {'input':>5}"
    print(header)
    print("-" * len(header))
    for info in infos:
        gflops = f"{info.gflops:.2f}" if info.gflops is not None else "-"
        acc = f"{info.acc1:.1f}" if info.acc1 is not None else "-"
        print(f"{info.name:<20} {info.family:<18} {info.params / 1e6:>8.1f}M {gflops:>7} "
              f"{acc:>6} {info.input_size:>5}")
    print(f"\n{len(infos)} backbones; acc@1 is ImageNet-1K top-1 of the default weights.")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# train


def _add_train_parser(commands: Any) -> None:
    train = commands.add_parser(
        "train", help="fine-tune a backbone on a dataset folder, headless",
        description="Fine-tune a backbone. Flags override the fields of --config; --resume "
                    "continues a stopped run from its last completed epoch.")
    where = train.add_argument_group("data and model")
    where.add_argument("--data", metavar="DIR", help="dataset folder")
    where.add_argument("--sample", action="store_true", help="use the bundled sample dataset")
    where.add_argument("--backbone", metavar="NAME", help="torchvision model (studio models)")
    where.add_argument("--out", metavar="RUN_DIR",
                       help="run folder to create (default runs/BACKBONE-DATE-TIME)")
    where.add_argument("--weights", metavar="default|none|PATH",
                       help="pretrained weights, none, or a .safetensors/.pth file")
    where.add_argument("--head", choices=["linear", "mlp"], help="classifier head")
    where.add_argument("--config", metavar="RUN_CONFIG.toml", help="start from a saved config")
    where.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    data = train.add_argument_group("data handling")
    data.add_argument("--image-size", type=int, metavar="N", help="input size in pixels")
    data.add_argument("--augment", choices=["none", "light", "standard", "strong"])
    data.add_argument("--val-fraction", type=float, metavar="F")
    data.add_argument("--balance", choices=["none", "loss", "sampler"],
                      help="class-weighted loss or a weighted sampler for imbalanced classes")
    freeze = train.add_argument_group("freezing and learning rates (patterns match names of "
                                      "named_parameters() or module prefixes)")
    freeze.add_argument("--freeze-preset", choices=["train_all", "head_only"])
    freeze.add_argument("--freeze-up-to", metavar="MODULE",
                        help="freeze this module and everything before it")
    freeze.add_argument("--freeze", action="append", metavar="GLOB", help="freeze matches")
    freeze.add_argument("--unfreeze", action="append", metavar="GLOB",
                        help="unfreeze matches (applied after --freeze)")
    freeze.add_argument("--lr", action="append", metavar="GLOB=LR",
                        help="a parameter group with its own learning rate; first match wins")
    freeze.add_argument("--base-lr", type=float, metavar="LR",
                        help="learning rate of everything no --lr matches")
    freeze.add_argument("--weight-decay", type=float, metavar="WD")
    loop = train.add_argument_group("training")
    loop.add_argument("--epochs", type=int, metavar="N")
    loop.add_argument("--batch-size", type=int, metavar="N")
    loop.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    loop.add_argument("--schedule", choices=["none", "step", "cosine", "onecycle"])
    loop.add_argument("--warmup-epochs", type=float, metavar="E")
    loop.add_argument("--loss", choices=["cross_entropy", "focal"])
    loop.add_argument("--label-smoothing", type=float, metavar="S")
    loop.add_argument("--grad-clip", type=float, metavar="NORM")
    loop.add_argument("--accumulate", type=int, metavar="N", help="gradient accumulation steps")
    loop.add_argument("--early-stopping", type=int, metavar="PATIENCE")
    loop.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    loop.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    loop.add_argument("--no-channels-last", action="store_true")
    loop.add_argument("--seed", type=int)
    loop.add_argument("--deterministic", action="store_true")
    loop.add_argument("--workers", type=int, metavar="N", help="DataLoader workers (-1: auto)")
    speed = train.add_argument_group("speed")
    speed.add_argument("--feature-cache", choices=["auto", "off"],
                       help="run frozen leading layers once per image and train on their cached "
                            "output (auto: when they come first and images are not augmented)")
    speed.add_argument("--cache-views", type=int, metavar="K",
                       help="with augmentation: cache K augmented views of every image")
    speed.add_argument("--image-cache", choices=["auto", "off"],
                       help="keep decoded, resized images in memory when they fit (auto)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the model")
    finder = train.add_argument_group("learning-rate finder")
    finder.add_argument("--find-lr", action="store_true",
                        help="do not train: sweep the learning rate from 1e-7 to 10 on this "
                             "config's freeze spec and groups and print a suggested base LR")
    finder.add_argument("--find-lr-steps", type=int, default=200, metavar="N",
                        help="length of the sweep (default 200; it ends early on divergence)")
    finder.add_argument("--json", action="store_true", help="with --find-lr: print the curve "
                                                            "as JSON")
    train.set_defaults(handler=_cmd_train)


# flag -> (config section, field)
_OVERRIDES = {
    "data": ("data", "root"), "image_size": ("data", "image_size"),
    "augment": ("data", "augment"), "val_fraction": ("data", "val_fraction"),
    "balance": ("data", "balance"), "backbone": ("model", "backbone"),
    "weights": ("model", "weights"), "base_lr": ("optim", "lr"),
    "weight_decay": ("optim", "weight_decay"), "optimizer": ("optim", "optimizer"),
    "schedule": ("optim", "schedule"), "warmup_epochs": ("optim", "warmup_epochs"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"),
    "loss": ("train", "loss"), "label_smoothing": ("train", "label_smoothing"),
    "grad_clip": ("train", "grad_clip"), "accumulate": ("train", "accumulate"),
    "early_stopping": ("train", "early_stopping"), "device": ("train", "device"),
    "precision": ("train", "precision"), "seed": ("train", "seed"),
    "workers": ("train", "workers"), "feature_cache": ("train", "feature_cache"),
    "cache_views": ("train", "cache_views"), "image_cache": ("train", "image_cache"),
}


def config_from_args(args: argparse.Namespace) -> Any:
    """A RunConfig from --config (or defaults) with every given flag applied on top."""
    import dataclasses

    from studio.engine.config import ConfigError, FreezeSpec, RunConfig

    config = RunConfig.load(args.config) if args.config else RunConfig()
    if args.sample:
        from studio.resources import sample_dataset

        args.data = str(sample_dataset())
    sections = {name: getattr(config, name) for name in ("data", "model", "optim", "train")}
    changes: dict[str, dict[str, Any]] = {name: {} for name in sections}
    for flag, (section, field) in _OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is not None:
            changes[section][field] = value
    if args.no_channels_last:
        changes["train"]["channels_last"] = False
    if args.deterministic:
        changes["train"]["deterministic"] = True
    if args.compile:
        changes["train"]["compile"] = True
    if args.lr:
        changes["optim"]["groups"] = tuple(_parse_lr(item) for item in args.lr)
    for section, fields in changes.items():
        if not fields:
            continue
        try:
            sections[section] = dataclasses.replace(sections[section], **fields)
        except ConfigError as error:
            raise ConfigError(f"{_flag_for(section, str(error))}: {error}") from error
    if args.head:
        sections["model"] = dataclasses.replace(
            sections["model"], head=dataclasses.replace(sections["model"].head, kind=args.head))
    freeze = config.freeze
    if args.freeze_preset or args.freeze_up_to or args.freeze or args.unfreeze:
        preset = "up_to" if args.freeze_up_to else (args.freeze_preset or freeze.preset)
        freeze = FreezeSpec(preset=preset, up_to=args.freeze_up_to or freeze.up_to,
                            freeze=freeze.freeze + tuple(args.freeze or ()),
                            unfreeze=freeze.unfreeze + tuple(args.unfreeze or ()),
                            bn_frozen=freeze.bn_frozen)
    return config.replace(freeze=freeze, **sections)


def _flag_for(section: str, message: str) -> str:
    if section == "optim" and "group" in message:
        return "--lr"
    field = message.split(" ", 1)[0]
    for flag, target in _OVERRIDES.items():
        if target == (section, field):
            return "--" + flag.replace("_", "-")
    return section


def _parse_lr(item: str) -> Any:
    from studio.engine.config import ConfigError, ParamGroupSpec

    pattern, sep, value = item.rpartition("=")
    try:
        lr = float(value)
    except ValueError:
        lr = None
    if not sep or not pattern or lr is None:
        raise ConfigError(f"--lr expects GLOB=LR, for example 'layer4=1e-4'; got {item!r}")
    try:
        return ParamGroupSpec(name=pattern, patterns=(pattern,), lr=lr)
    except ConfigError as error:
        raise ConfigError(f"--lr {item}: {error}") from error


def _cmd_train(args: argparse.Namespace) -> int:
    import signal
    import threading
    import time
    from pathlib import Path

    from studio.engine.errors import StudioError
    from studio.engine.events import Outcome
    from studio.engine.trainer import Trainer

    progress = TerminalProgress(sys.stderr)
    if args.resume:
        trainer = Trainer.resume_run(args.resume, epochs=args.epochs, callbacks=[progress])
    else:
        config = config_from_args(args)
        if not config.data.root:
            raise StudioError("no dataset given; pass --data DIR (a folder with one subfolder "
                              "per class), --sample, or --config")
        if args.find_lr:
            return _find_lr(args, config)
        out = args.out or str(Path("runs") / f"{config.model.backbone}-"
                                              f"{time.strftime('%Y%m%d-%H%M%S')}")
        trainer = Trainer(config, out, callbacks=[progress])

    stop = threading.Event()

    def on_interrupt(signum: int, frame: Any) -> None:
        stop.set()
        print("\nstopping after this batch (Ctrl-C again to abort)", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = trainer.fit(stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.outcome in (Outcome.COMPLETED, Outcome.EARLY_STOPPED):
        return EXIT_OK
    if result.outcome is Outcome.CANCELLED:
        return 130
    return EXIT_ERROR


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class TerminalProgress(Callback):
    """Training progress: a live bar on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.epochs = 0

    def _line(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def on_fit_start(self, event: Any) -> None:
        self.epochs = event.epochs
        verb = "resuming at" if event.start_epoch > 1 else "starting"
        self._line(f"{verb} epoch {event.start_epoch}/{event.epochs} in {event.run_dir}: "
                   f"{event.train_images} train / {event.val_images} val images, "
                   f"{len(event.classes)} classes, {event.device}, {event.precision}"
                   f"{', channels_last' if event.channels_last else ''}")

    def on_stage_start(self, event: Any) -> None:
        share = 100 * event.trainable_params / max(1, event.total_params)
        label = "freeze spec" if event.index == 0 else f"stage {event.index}"
        self._line(f"epoch {event.epoch}: {label}, training {event.trainable_params:,} of "
                   f"{event.total_params:,} parameters ({share:.1f} %) in groups "
                   f"{', '.join(event.groups)}")

    def on_batch_end(self, event: Any) -> None:
        if not self.live:
            return
        width = 24
        filled = int(width * event.step / max(1, event.steps))
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r\033[Kepoch {event.epoch}/{self.epochs} [{bar}] "
                          f"{event.step}/{event.steps} loss {event.loss:.4f} "
                          f"acc {100 * event.accuracy:.1f}% {event.images_per_second:.0f} img/s "
                          f"ETA {_duration(event.eta_seconds)}")
        self.stream.flush()

    def on_epoch_end(self, event: Any) -> None:
        best = "  *best*" if event.is_best else ""
        self._line(f"epoch {event.epoch}/{self.epochs}: train loss {event.train_loss:.4f} "
                   f"acc {100 * event.train_acc:.1f}% | val loss {event.val_loss:.4f} "
                   f"acc {100 * event.val_acc:.1f}% | {event.seconds:.1f}s "
                   f"{event.images_per_second:.0f} img/s{best}")

    def on_warning(self, event: Any) -> None:
        self._line(f"warning: {event.message}")

    def on_cache(self, event: Any) -> None:
        if event.state == "building" and not self.live:
            return
        self._line(event.describe() + ("…" if event.state == "building" else ""))

    def on_fit_end(self, event: Any) -> None:
        best = ""
        if event.best_metric is not None:
            best = f"; best {event.monitor} {event.best_metric:.4f} at epoch {event.best_epoch}"
        prefix = "error: " if event.outcome.value == "failed" else ""
        where = f", run folder {event.run_dir}" if os.path.isdir(event.run_dir) else ""
        self._line(f"{prefix}{event.message}{best} ({_duration(event.seconds)}{where})")


# ---------------------------------------------------------------------------------------------
# export

EXPORT_FORMATS = ("onnx", "int8", "torchscript", "safetensors", "bundle")  # export.FORMATS


def _add_export_parser(commands: Any) -> None:
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
    export.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from studio.engine.export import export_run

    def progress(message: str) -> None:
        print(f"{message}…", file=sys.stderr, flush=True)

    report = export_run(args.run_dir, args.format, out=args.out, checkpoint=args.checkpoint,
                        opset=args.opset, progress=progress)
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


# ---------------------------------------------------------------------------------------------
# eval, predict, lr-find


def _add_eval_parsers(commands: Any) -> None:
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
    predict.set_defaults(handler=_cmd_predict)


def _cmd_eval(args: argparse.Namespace) -> int:
    from studio.engine.evaluate import evaluate_run

    evaluation = evaluate_run(args.run_dir, data=args.data, checkpoint=args.checkpoint,
                              split=args.split, device=args.device,
                              progress=None if args.json else _Progress("evaluating"))
    if args.json:
        print(json.dumps(evaluation.to_json(), indent=2, ensure_ascii=False))
    else:
        print(evaluation.report())
    return EXIT_OK


def _cmd_predict(args: argparse.Namespace) -> int:
    from studio.engine.config import ConfigError
    from studio.engine.errors import DatasetError
    from studio.engine.evaluate import Predictor

    if args.top < 1:
        raise ConfigError(f"--top must be at least 1; got {args.top}")
    predictor = Predictor(args.run_dir, checkpoint=args.checkpoint, device=args.device)
    results, failed = [], 0
    for path in args.images:
        try:
            prediction = predictor.predict(path, k=args.top)
        except DatasetError as error:
            failed += 1
            print(f"error: {error}", file=sys.stderr)
            results.append({"path": path, "error": str(error)})
            continue
        results.append(prediction.to_json())
        if not args.json:
            ranked = "  ".join(f"{name} {probability:.1%}" for name, probability in prediction.top)
            print(f"{path}: {ranked}")
    if args.json:
        print(json.dumps({"labels": predictor.labels, "predictions": results}, indent=2,
                         ensure_ascii=False))
    return EXIT_ERROR if failed else EXIT_OK


def _find_lr(args: argparse.Namespace, config: Any) -> int:
    """`studio train --find-lr`: sweep instead of training; nothing is written."""
    from studio.engine.lr_finder import find_lr

    live = sys.stderr.isatty() and not args.json

    def progress(step: int, steps: int, lr: float, loss: float) -> None:
        if live:
            end = "\n" if step >= steps else ""
            sys.stderr.write(f"\rsweeping {step}/{steps}  lr {lr:.2e}  loss {loss:.4f}{end}")
            sys.stderr.flush()

    result = find_lr(config, steps=args.find_lr_steps, progress=progress)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return EXIT_OK
    if live and result.ended != "finished":
        sys.stderr.write("\n")
    how = {"finished": "finished", "diverged": "stopped when the loss diverged",
           "stopped": "stopped"}[result.ended]
    print(f"swept {len(result.lrs)} steps from {result.lrs[0] if result.lrs else 0:.0e} "
          f"({how})")
    if result.suggestion is None:
        print("no suggestion: the curve is too short or never falls; try more --steps")
    else:
        factor = result.suggestion / result.base_lr
        print(f"suggested base learning rate: {result.suggestion:.2e} (now {result.base_lr:g}; "
              f"groups scale by {factor:.3g})")
    return EXIT_OK
