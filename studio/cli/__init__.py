"""The command line: a thin face on the engine.

``studio scan`` and ``studio models`` describe data and backbones, ``doctor`` and ``clean``
(cli/data.py) check and fix a dataset; ``train`` (cli/train.py, with cli/launch.py for several
processes), ``eval``, ``predict`` and ``export`` (cli/evaluate.py) run the engine. Every error a
user can cause ends in one sentence and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from studio import __version__
from studio.cli.common import EXIT_ERROR, EXIT_OK, Progress
from studio.cli.data import add_data_parsers
from studio.cli.evaluate import add_eval_parsers, add_export_parser
from studio.cli.runs import add_runs_parser
from studio.cli.train import add_train_parser
from studio.engine.logs import log_unexpected, setup_logging

log = logging.getLogger("studio")



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studio", description="Finetune Studio: fine-tune torchvision image classifiers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    parser.add_argument("--demo", action="store_true",
                        help="open the app with the bundled sample dataset, ready to train")
    parser.add_argument("--check", action="store_true",
                        help="list what the desktop window needs that this system lacks (system "
                             "libraries with their packages, a display, torch, onnxruntime); "
                             "exit 1 if anything is missing")
    parser.add_argument("--self-test", action="store_true",
                        help="open the window offscreen and run torch, torchvision, Qt and "
                             "onnxruntime once each; exit 1 if any fails")
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
    add_data_parsers(commands)

    add_train_parser(commands)
    add_export_parser(commands)
    add_eval_parsers(commands)
    add_runs_parser(commands)

    zoo = commands.add_parser("models", help="list the torchvision (and timm) backbones")
    zoo.add_argument("filter", nargs="?", default="", help="show names containing this text")
    zoo.add_argument("--json", action="store_true", help="print a JSON list")
    zoo.add_argument("--count-params", action="store_true",
                     help="count the parameters of every listed timm model not counted yet "
                          "(minutes for all of them, once: the counts are cached)")
    zoo.set_defaults(handler=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # what a launcher hands on to the processes it starts
    setup_logging(args.verbose)
    if args.check or args.self_test:  # whatever else is asked: these answer whether it can run
        args.handler = _cmd_check if args.check else _cmd_self_test
    elif args.command is None:
        args.handler, args.project = _cmd_gui, None
    from studio.engine.errors import StudioError, os_error_sentence

    command = f"studio {args.command or 'gui'}"
    try:
        return int(args.handler(args) or EXIT_OK)
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `studio models | head`: the reader left, which is fine
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return EXIT_OK
    except OSError as error:  # a path the user gave or a disk: a sentence, the rest in the log
        log.info("%s failed", args.command, exc_info=True)
        print(f"error: {os_error_sentence(error, command)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: one sentence here, the traceback in the log file
        print(f"error: {log_unexpected(log, command + ' failed', error)}", file=sys.stderr)
        return EXIT_ERROR


# ---------------------------------------------------------------------------------------------
# gui


def _cmd_gui(args: argparse.Namespace) -> int:
    from studio.ui.app import run

    return run(project_file=args.project, demo=args.demo)


def _cmd_check(args: argparse.Namespace) -> int:
    from studio.check import run_checks

    report = run_checks()
    print(f"Finetune Studio {__version__}: what the window needs\n")
    print(report.format())
    return EXIT_OK if report.ok else EXIT_ERROR


def _cmd_self_test(args: argparse.Namespace) -> int:
    from studio.ui.self_test import run_self_test

    return run_self_test()


# ---------------------------------------------------------------------------------------------
# scan


def _cmd_scan(args: argparse.Namespace) -> int:
    from studio.engine.config import ConfigError, DataConfig
    from studio.engine.data import scan_folder

    try:
        DataConfig(val_fraction=args.val_fraction)  # its limits, said as for a config
    except ConfigError as error:
        raise ConfigError("--" + str(error).replace("val_fraction", "val-fraction", 1)) from error
    if args.sample:
        from studio.resources import sample_dataset

        root = sample_dataset()
    else:
        root = args.data
    scan = scan_folder(root, val_fraction=args.val_fraction, seed=args.seed,
                       progress=None if args.json else Progress("verifying images"))
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


COUNT_NOW = 40  # uncounted timm models a listing counts on the spot (0.1-0.5 s each)


def _cmd_models(args: argparse.Namespace) -> int:
    from studio.engine.backbones import all_backbones

    infos = [i for i in all_backbones() if args.filter.lower() in i.name.lower()]
    uncounted = [i.name for i in infos if i.params is None]
    if uncounted and (args.count_params or len(uncounted) <= COUNT_NOW):
        infos = _with_counts(infos, uncounted, verbose=len(uncounted) > COUNT_NOW)
        uncounted = [i.name for i in infos if i.params is None]
    if args.json:
        print(json.dumps([i.to_json() for i in infos], indent=2))
        return EXIT_OK
    width = max([20, *(len(i.name) for i in infos)])
    header = (f"{'name':<{width}} {'family':<18} {'params':>9} {'GFLOPs':>7} {'acc@1':>6} "
              f"{'input':>5}  default weights")
    print(header)
    print("-" * len(header))
    for info in infos:
        gflops = f"{info.gflops:.2f}" if info.gflops is not None else "-"
        acc = f"{info.acc1:.1f}" if info.acc1 is not None else "-"
        params = f"{info.params / 1e6:>8.1f}M" if info.params is not None else f"{'-':>9}"
        print(f"{info.name:<{width}} {info.family:<18} {params} {gflops:>7} "
              f"{acc:>6} {info.input_size:>5}  {info.default_weights or '-'}")
    print(f"\n{len(infos)} backbones; acc@1 is ImageNet-1K top-1 of the default weights.")
    if uncounted:
        print(f"{len(uncounted)} timm models have no parameter count yet; narrow the filter, "
              f"or add --count-params to count them once (0.1-0.5 s each, cached).")
    return EXIT_OK


def _with_counts(infos: list[Any], names: list[str], verbose: bool) -> list[Any]:
    """``infos`` with the timm parameter counts filled in (counted now where unknown)."""
    from dataclasses import replace

    from studio.engine import timm_zoo

    def progress(done: int, total: int) -> None:
        if verbose and (done % 25 == 0 or done == total):
            print(f"counted {done} of {total} timm models", file=sys.stderr, flush=True)

    counts = timm_zoo.count_params(names, progress)
    return [replace(i, params=counts.get(i.name, i.params)) for i in infos]


