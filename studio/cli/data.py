"""`studio doctor` and `studio clean`: what is wrong with a dataset folder, and fixing it.

``doctor`` reports duplicates, near-duplicates, leaks between splits, conflicts between classes,
odd images, imbalance and (with ``--run``) suspected label errors; ``clean`` relabels or
removes one file, undoes the last changes, or lists the journal. Nothing is ever deleted.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from studio.cli.common import EXIT_OK, Progress


def add_data_parsers(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor", help="check a dataset folder: duplicates, near-duplicates, leaks, conflicts, "
                       "odd images, imbalance, suspected label errors",
        description="Read every image once: exact duplicates by content hash, near-duplicates "
                    "by perceptual hash (pHash), the same image in two splits (leak) or two "
                    "classes (conflict), tiny or elongated images, class imbalance; with --run, "
                    "validation images the run confidently puts in another class. Paths in the "
                    "output are relative to DIR.")
    doctor.add_argument("data", metavar="DIR", help="the dataset folder")
    doctor.add_argument("--run", metavar="RUN_DIR",
                        help="a run trained on DIR: also list suspected label errors among its "
                             "validation images")
    doctor.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                        help="the train/val split to check for leaks (class-folder layout; "
                             "use the run's)")
    doctor.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    doctor.set_defaults(handler=_cmd_doctor)

    clean = commands.add_parser(
        "clean", help="relabel or remove an image of a dataset, undo, or show the journal",
        description="Relabel (move to another class folder) or remove (move into DIR/"
                    ".studio-trash/) one image, undo the last changes, or list the journal "
                    "(DIR/.studio-journal.jsonl). Nothing is deleted or overwritten; a taken "
                    "name gets a ' (1)' suffix.")
    clean.add_argument("data", metavar="DIR", help="the dataset folder")
    what = clean.add_mutually_exclusive_group(required=True)
    what.add_argument("--relabel", nargs=2, metavar=("FILE", "CLASS"),
                      help="move FILE (relative to DIR, or absolute) into class CLASS")
    what.add_argument("--remove", metavar="FILE", help="move FILE into DIR/.studio-trash/")
    what.add_argument("--undo", nargs="?", type=int, const=1, metavar="N",
                      help="undo the last N changes (default 1)")
    what.add_argument("--journal", action="store_true", help="list the changes made so far")
    clean.add_argument("--json", action="store_true", help="print the changes as JSON")
    clean.set_defaults(handler=_cmd_clean)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from studio.engine.config import ConfigError, DataConfig
    from studio.engine.doctor import diagnose

    try:
        DataConfig(val_fraction=args.val_fraction)
    except ConfigError as error:
        raise ConfigError("--" + str(error).replace("val_fraction", "val-fraction", 1)) from error
    report = diagnose(args.data, val_fraction=args.val_fraction, seed=args.seed,
                      run_dir=args.run, progress=None if args.json else Progress("checking"))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print(format_report(report))
    return EXIT_OK


def format_report(report: Any) -> str:
    lines = [f"Dataset {report.root}: {report.images} images checked"]

    def section(title: str, rows: list[str]) -> None:
        if rows:
            lines.extend(["", f"{title} ({len(rows)}):", *(f"  {row}" for row in rows)])

    section("Exact duplicates", ["  ".join(group) for group in report.duplicates])
    section("Near-duplicates", ["  ".join(group) for group in report.near_duplicates])
    section("Leaks (same image in two splits)", [
        "  ".join(f"{split}: {', '.join(paths)}" for split, paths in leak.splits.items())
        + f"  [{leak.kind}]" for leak in report.leaks])
    section("Conflicts (same image in two classes)", [
        "  ".join(f"{p} ({c})" for p, c in zip(c.paths, c.classes, strict=True))
        + f"  [{c.kind}]" for c in report.conflicts])
    section("Odd images", [f"{o.path}  {o.width}×{o.height}  {o.reason}"
                           for o in report.odd_images])
    section("Suspected label errors", [
        f"{i.path}  given {i.given}, looks like {i.suggested} ({i.confidence:.0%})"
        for i in report.suspected_label_errors])
    if report.warnings:
        lines += ["", "Warnings:", *(f"  - {w}" for w in report.warnings)]
    if not report.findings:
        lines += ["", "No duplicates, leaks, conflicts or odd images found."]
    methods = [f"near-duplicates: {report.near_method}"] if report.near_method else []
    if report.label_method:
        methods.append(f"label errors: {report.label_method}")
    if methods:
        lines += ["", *methods]
    return "\n".join(lines)


def _cmd_clean(args: argparse.Namespace) -> int:
    from studio.engine.cleaner import Cleaner

    cleaner = Cleaner(args.data)
    if args.journal:
        changes = cleaner.journal()
        if not args.json and not changes:
            print(f"No changes recorded in {cleaner.journal_path}.")
            return EXIT_OK
    elif args.undo is not None:
        changes = cleaner.undo(args.undo)
    elif args.relabel:
        changes = [cleaner.relabel(*args.relabel)]
    else:
        changes = [cleaner.remove(args.remove)]
    if args.json:
        print(json.dumps([c.to_json() for c in changes], indent=2, ensure_ascii=False))
    else:
        for change in changes:
            stamp = f"{change.time}  " if args.journal else ""
            print(f"{change.id:>4}  {stamp}{change.describe()}")
    return EXIT_OK
