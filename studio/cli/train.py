"""`studio train`: flags → RunConfig, the fit with live progress, the LR finder."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

from studio.cli.common import EXIT_ERROR, EXIT_OK, duration
from studio.cli.flags import SECTION_TITLES, add_config_flags, flag_changes, flag_for
from studio.cli.launch import add_scale_out_arguments
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
    where.add_argument("--config", metavar="RUN_CONFIG.toml", help="start from a saved config")
    where.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    where.add_argument("--rerun", metavar="RUN_DIR",
                       help="run RUN_DIR's exact config again (same seed) into --out; says "
                            "first what changed since (dataset files, library versions)")
    where.add_argument("--hash-content", action="store_true",
                       help="run.json also fingerprints every image's bytes (slower to start; "
                            "a re-run then notices contents changed in place)")
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
    adapters = train.add_argument_group(SECTION_TITLES["lora"])
    adapters.add_argument("--lora", action="extend", nargs="+", metavar="GLOB",
                          help="LoRA adapters on the Linear, Conv2d and attention layers under "
                               "these modules (globs as --freeze); their base weights stay "
                               "frozen")
    adapters.add_argument("--lora-preset", choices=["attention", "linear"],
                          help="LoRA on every attention layer, or on every linear layer "
                               "(the layers are written into the run's config)")
    add_config_flags(train, groups={SECTION_TITLES["lora"]: adapters},
                     custom={"batch-size": {
        "type": _batch_size, "metavar": "N|auto",
        "help": "Images per step (per process); auto: the largest that fits on the CUDA GPU, "
                "less a 10 %% margin, found by trial steps before training (default 32)"}})
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


# flags that are not a field's setting: names and paths, and torchrun's --nproc-per-node
_PATHS = {"data": ("data", "root"), "backbone": ("model", "backbone"),
          "weights": ("model", "weights"), "nproc_per_node": ("train", "processes")}
AUTO = "auto"


def _batch_size(text: str) -> int | str:
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number of images or auto; got {text!r}")\
            from None


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
    given = flag_changes(args)
    if given["train"].get("batch_size") == AUTO:  # found later, once the config is complete
        del given["train"]["batch_size"]
    for section in sections:
        changes[section].update(given.get(section, {}))
    for flag, (section, name) in _PATHS.items():
        if getattr(args, flag) is not None:
            changes[section][name] = getattr(args, flag)
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
    if given["head"]:
        model = sections["model"]
        try:
            head = dataclasses.replace(model.head, **given["head"])
        except ConfigError as error:
            raise ConfigError(f"{_flag_for('head', str(error))}: {error}") from error
        sections["model"] = dataclasses.replace(model, head=head)
    freeze = config.freeze
    if args.freeze_preset or args.freeze_up_to or args.freeze or args.unfreeze:
        preset = "up_to" if args.freeze_up_to else (args.freeze_preset or freeze.preset)
        freeze = FreezeSpec(preset=preset, up_to=args.freeze_up_to or freeze.up_to,
                            freeze=freeze.freeze + tuple(args.freeze or ()),
                            unfreeze=freeze.unfreeze + tuple(args.unfreeze or ()),
                            bn_frozen=freeze.bn_frozen)
    config = config.replace(freeze=freeze, **sections)
    config = config.replace(lora=_lora_from_args(args, config, given["lora"]))
    if getattr(args, "layer_decay", None) is not None:
        config = _with_layer_decay(config, args.layer_decay, bool(args.lr))
    return config


def _lora_from_args(args: argparse.Namespace, config: Any, given: dict[str, Any]) -> Any:
    """config.lora with --lora targets, --lora-preset's layers and --lora-rank/alpha/dropout."""
    import dataclasses

    from studio.engine.config import ConfigError

    spec = config.lora
    targets = tuple(getattr(args, "lora", None) or ())
    preset = getattr(args, "lora_preset", None)
    if preset:
        from studio.engine.backbones import describe_model
        from studio.engine.lora import PRESETS, preset_targets

        description = describe_model(config.model, 2, config.data.image_size)
        size = config.data.image_size or 224
        found = preset_targets(description.model, description.head, preset, size)
        if not found:
            raise ConfigError(f"--lora-preset {preset}: {config.model.backbone} has no layer "
                              f"for {PRESETS[preset]!r}; name modules with --lora instead")
        targets += found
    try:
        return dataclasses.replace(spec, targets=spec.targets + targets, **given)
    except ConfigError as error:
        raise ConfigError(f"{_flag_for('lora', str(error))}: {error}") from error


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
    name = message.split(" ", 1)[0]
    found = next((f"--{flag}" for flag, target in _PATHS.items() if target == (section, name)),
                 None)
    return found or flag_for(section, name) or section


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
    if args.batch_size == AUTO:
        config = _auto_batch_size(config)
        args.argv = _with_batch_size(args.argv, config.train.batch_size)  # for torchrun's ranks
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


def _auto_batch_size(config: Any) -> Any:
    """The config with the batch size :func:`find_batch_size` finds (the configured one on a
    machine without a CUDA GPU), said in one line; the run's config.toml records the number."""
    import dataclasses

    from studio.engine.batch_finder import find_batch_size

    found = find_batch_size(config)
    print(found.message, file=sys.stderr, flush=True)
    return config.replace(train=dataclasses.replace(config.train, batch_size=found.batch_size))


def _with_batch_size(argv: list[str], batch: int) -> list[str]:
    """``argv`` with ``--batch-size auto`` (or ``--batch-size=auto``) given as ``batch``."""
    out = list(argv)
    for index, token in enumerate(out):
        flag, sep, value = token.partition("=")
        if len(flag) > 3 and "--batch-size".startswith(flag):  # argparse takes prefixes
            if sep and value == AUTO:
                out[index] = f"{flag}={batch}"
            elif not sep and index + 1 < len(out) and out[index + 1] == AUTO:
                out[index + 1] = str(batch)
    return out


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
        if event.adapted_layers:
            from studio.engine.lora import lora_line

            self._line(lora_line(event.trainable_params, event.total_params,
                                 event.adapter_params, event.adapted_layers))

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
