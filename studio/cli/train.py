"""`studio train`: flags → RunConfig, the fit with live progress, the LR finder."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

from studio.cli.common import EXIT_ERROR, EXIT_OK, duration
from studio.cli.launch import add_scale_out_arguments
from studio.engine.config import MONITORS
from studio.engine.events import Callback, weights_label


def add_train_parser(commands: Any) -> None:
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
    where.add_argument("--rerun", metavar="RUN_DIR",
                       help="run RUN_DIR's exact config again (same seed) into --out; says "
                            "first what changed since (dataset files, library versions)")
    where.add_argument("--hash-content", action="store_true",
                       help="run.json also fingerprints every image's bytes (slower to start; "
                            "a re-run then notices contents changed in place)")
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
    freeze.add_argument("--layer-decay", type=float, metavar="RATE",
                        help="layer-wise learning-rate decay: one group per layer, the head at "
                             "the base LR and each layer below it × RATE (0 < RATE ≤ 1, e.g. "
                             "0.75); not with --lr")
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
    loop.add_argument("--mixup", type=float, metavar="ALPHA",
                      help="MixUp training batches with Beta(ALPHA, ALPHA) weights (0: off)")
    loop.add_argument("--cutmix", type=float, metavar="ALPHA", help="CutMix (0: off)")
    loop.add_argument("--mix-prob", type=float, metavar="P",
                      help="share of batches mixed (default 1)")
    loop.add_argument("--mix-switch", type=float, metavar="P",
                      help="with both on: the chance a batch gets CutMix (default 0.5)")
    loop.add_argument("--mix-until", type=int, metavar="EPOCH",
                      help="last epoch that mixes (default 0: every epoch)")
    loop.add_argument("--ema", type=float, metavar="DECAY",
                      help="keep a moving average of the weights with this decay, e.g. 0.999 "
                           "(0: off); it is validated beside them each epoch, and the better "
                           "of the two is what best.pt holds")
    loop.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=None,
                      help="with --ema: start with a low decay, min(DECAY, (1+t)/(10+t)) at "
                           "update t, so a short run averages recent steps (default on)")
    loop.add_argument("--monitor", choices=list(MONITORS),
                      help="what picks the best checkpoint and drives early stopping "
                           "(default val_acc; macro_f1 or balanced_acc for imbalanced classes)")
    loop.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    loop.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    loop.add_argument("--no-channels-last", action="store_true")
    loop.add_argument("--no-tensorboard", action="store_true",
                      help="write no TensorBoard event files into the run folder")
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
    add_scale_out_arguments(train)
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
    "early_stopping": ("train", "early_stopping"), "monitor": ("train", "monitor"),
    "mixup": ("train", "mixup"), "cutmix": ("train", "cutmix"),
    "mix_prob": ("train", "mix_prob"), "mix_switch": ("train", "mix_switch"),
    "mix_until": ("train", "mix_until"),
    "ema": ("train", "ema"), "ema_warmup": ("train", "ema_warmup"),
    "device": ("train", "device"),
    "precision": ("train", "precision"), "seed": ("train", "seed"),
    "workers": ("train", "workers"), "feature_cache": ("train", "feature_cache"),
    "cache_views": ("train", "cache_views"), "image_cache": ("train", "image_cache"),
    "nproc_per_node": ("train", "processes"),
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
    if args.no_tensorboard:
        changes["train"]["tensorboard"] = False
    if args.deterministic:
        changes["train"]["deterministic"] = True
    if args.compile:
        changes["train"]["compile"] = True
    if args.sync_bn:
        changes["train"]["sync_bn"] = True
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
    config = config.replace(freeze=freeze, **sections)
    if getattr(args, "layer_decay", None) is not None:
        config = _with_layer_decay(config, args.layer_decay, bool(args.lr))
    return config


def _with_layer_decay(config: Any, rate: float, has_lr_groups: bool) -> Any:
    """The config with one group per layer of its backbone, built on the meta device for the
    parameter names; the groups are written out, so the run's config records every rate."""
    import dataclasses

    from studio.engine.backbones import describe_model
    from studio.engine.config import ConfigError
    from studio.engine.layer_decay import description_layer_decay

    if has_lr_groups:
        raise ConfigError("--layer-decay and --lr both set the parameter groups; pass one of "
                          "them")
    try:
        description = describe_model(config.model, 2)
        groups = description_layer_decay(description, config.optim.lr, rate)
    except ConfigError as error:
        raise ConfigError(f"--layer-decay: {error}") from error
    return config.replace(optim=dataclasses.replace(config.optim, groups=groups))


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
    """One process trains here (the world of one, or one rank under torchrun); with
    --nproc-per-node above 1 (or --nnodes), torchrun is started on this same command."""
    from studio.cli.launch import launch, preflight, wants_launch
    from studio.engine.errors import StudioError
    from studio.engine.runs import RunPaths

    if args.resume:
        saved = RunPaths(args.resume)
        config = None
        processes = args.nproc_per_node
        if processes is None and saved.config.is_file():
            from studio.engine.config import RunConfig

            config = RunConfig.load(saved.config)
            processes = config.train.processes
        processes = processes or 1
        if wants_launch(args, processes):
            if config is None and saved.config.is_file():
                from studio.engine.config import RunConfig

                config = RunConfig.load(saved.config)
            if config is None:
                raise StudioError(f"{args.resume} is not a run folder (it has no config.toml); "
                                  f"resume the folder that `studio train --out` wrote")
            preflight(config, args, processes)
            return launch(args.argv, args, processes)
        return _fit(args, None)
    if args.rerun:
        config = _rerun_config(args)
    else:
        config = config_from_args(args)
    if not config.data.root:
        raise StudioError("no dataset given; pass --data DIR (a folder with one subfolder "
                          "per class), --sample, or --config")
    _fetch_weights(config)
    if args.find_lr:
        return _find_lr(args, config)
    if wants_launch(args, config.train.processes):
        preflight(config, args, config.train.processes)
        return launch(args.argv, args, config.train.processes)
    return _fit(args, config)


def _fetch_weights(config: Any) -> None:
    """Pretrained weights not cached yet come down before anything starts, with progress (and
    once: torchrun's processes then find them in the cache)."""
    from studio.cli.common import DownloadProgress
    from studio.engine.downloads import ensure_pretrained, hub_cache_path, weights_to_download

    weights = weights_to_download(config.model)
    if weights is not None:
        ensure_pretrained(config.model, DownloadProgress(hub_cache_path(weights).name))


def _rerun_config(args: argparse.Namespace) -> Any:
    """The config a run ran with (its data folder resolved), after saying what changed."""
    from studio.cli.runs import rerun_notes
    from studio.engine.config import RunConfig
    from studio.engine.errors import StudioError
    from studio.engine.runs import RunPaths

    paths = RunPaths(args.rerun)
    if not paths.config.is_file():
        raise StudioError(f"{args.rerun} is not a run folder (it has no config.toml); re-run a "
                          f"folder that `studio train --out` wrote")
    if args.config or args.resume:
        raise StudioError("--rerun takes the run's own config; leave out --config and --resume")
    config = RunConfig.load(paths.config)
    notes = rerun_notes(str(paths.root), config)
    if notes:
        print(f"note: {'; '.join(notes)}", file=sys.stderr)
    else:
        print("note: the dataset and the library versions are the same as in that run",
              file=sys.stderr)
    return config


def _fit(args: argparse.Namespace, config: Any) -> int:
    """Train in this process: alone, or as the rank torchrun's environment names."""
    import dataclasses
    import signal
    import threading

    from studio.engine.events import LineEmitter, Outcome
    from studio.engine.runs import new_run_dir
    from studio.engine.runtime import Placement
    from studio.engine.trainer import Trainer

    device = config.train.device if config is not None else (args.device or "auto")
    if config is None and args.resume and args.device is None:
        from studio.engine.config import RunConfig
        from studio.engine.runs import RunPaths

        device = RunConfig.load(RunPaths(args.resume).config).train.device
    placement = Placement.from_environment(device, args.dist_timeout, args.backend)
    callbacks: list[Callback] = [TerminalProgress(sys.stderr, placement.describe())]
    if args.json_events:
        callbacks.append(LineEmitter(sys.stdout))
    if args.resume:
        trainer = Trainer.resume_run(args.resume, epochs=args.epochs, callbacks=callbacks,
                                     placement=placement,
                                     processes=placement.local_world_size,
                                     command=["studio", *args.argv])
    else:
        if config.train.processes != placement.local_world_size:  # torchrun run by hand
            config = config.replace(train=dataclasses.replace(
                config.train, processes=placement.local_world_size))
        out = args.out or str(new_run_dir(None, config.model.backbone))
        trainer = Trainer(config, out, callbacks=callbacks, placement=placement,
                          command=["studio", *args.argv],
                          rerun_of=str(args.rerun) if args.rerun else None,
                          hash_content=args.hash_content)

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if not stop.is_set() and placement.is_main:
            print("\nstopping after this batch" + ("" if placement.distributed else
                                                    " (Ctrl-C again to abort)"),
                  file=sys.stderr)
        stop.set()
        if not placement.distributed:  # alone, a second Ctrl-C aborts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    handled = (signal.SIGINT, signal.SIGTERM) if placement.distributed else (signal.SIGINT,)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        result = trainer.fit(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        placement.close()
    if not placement.is_main and result.outcome is Outcome.FAILED and not trainer.told_by_main:
        print(f"error: rank {placement.rank}: {result.message}", file=sys.stderr)
    if result.outcome in (Outcome.COMPLETED, Outcome.EARLY_STOPPED):
        return EXIT_OK
    if result.outcome is Outcome.CANCELLED:
        return 130
    return EXIT_ERROR


class TerminalProgress(Callback):
    """Training progress: a live bar on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO, processes: str = "1 process") -> None:
        self.stream = stream
        self.processes = processes
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
                   f"{', channels_last' if event.channels_last else ''}{self._world(event)}")

    def _world(self, event: Any) -> str:
        if event.processes <= 1:
            return ""
        import socket

        return f"; {self.processes}, rank 0 on {socket.gethostname()}"

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
                          f"ETA {duration(event.eta_seconds)}")
        self.stream.flush()

    def on_epoch_end(self, event: Any) -> None:
        best = "  *best*" if event.is_best else ""
        ema = ""
        if event.weights:  # model EMA: its figures, and which weights the epoch keeps
            ema = (f" | EMA val loss {event.ema_val_loss:.4f} acc "
                   f"{100 * event.ema_val_acc:.1f}%")
            best += f" ({weights_label(event.weights)})" if event.is_best else ""
        self._line(f"epoch {event.epoch}/{self.epochs}: train loss {event.train_loss:.4f} "
                   f"acc {100 * event.train_acc:.1f}% | val loss {event.val_loss:.4f} "
                   f"acc {100 * event.val_acc:.1f}%{ema} | {event.seconds:.1f}s "
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
            if getattr(event, "best_weights", ""):
                best += f" ({weights_label(event.best_weights)})"
        prefix = "error: " if event.outcome.value == "failed" else ""
        where = f", run folder {event.run_dir}" if os.path.isdir(event.run_dir) else ""
        self._line(f"{prefix}{event.message}{best} ({duration(event.seconds)}{where})")


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
