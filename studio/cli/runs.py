"""`studio runs`: the run history as a table or JSON lines; what `train --rerun` checks first."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from studio.cli.common import EXIT_OK, duration
from studio.format import format_size


def add_runs_parser(commands: Any) -> None:
    runs = commands.add_parser(
        "runs", help="list the runs under the runs root (or the given folders)",
        description="Every run folder directly under the runs root ($STUDIO_RUNS_DIR or the "
                    "user data folder) or under each ROOT given: status, epochs, best metric.")
    runs.add_argument("roots", nargs="*", metavar="ROOT", help="folders holding run folders")
    runs.add_argument("--json", action="store_true", help="one JSON object per run, a line each")
    runs.set_defaults(handler=_cmd_runs)


def _cmd_runs(args: argparse.Namespace) -> int:
    from studio.engine.history import list_runs

    runs = list_runs(args.roots or None)
    if args.json:
        for run in runs:
            print(json.dumps(run.to_json(), ensure_ascii=False))
        return EXIT_OK
    if not runs:
        print("no runs yet; `studio train` writes one")
        return EXIT_OK
    print(format_runs(runs))
    return EXIT_OK


def format_runs(runs: list[Any]) -> str:
    rows = [("name", "status", "started", "backbone", "freeze", "epochs", "best", "time",
             "size")]
    for run in runs:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started)) \
            if run.started else "-"
        best = (f"{run.monitor} {run.best_metric:.4f} @{run.best_epoch}"
                f"{' (EMA)' if getattr(run, 'best_weights', '') == 'ema' else ''}"
                if run.best_metric is not None else "-")
        rows.append((run.name, run.status, started, run.backbone, run.freeze,
                     f"{run.epochs}/{run.planned}", best, duration(run.seconds),
                     format_size(run.size_bytes)))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
             .rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + f"\n\n{len(runs)} run{'s' if len(runs) != 1 else ''}"


def rerun_notes(run_dir: str, config: Any) -> list[str]:
    """What changed since the run (dataset files, versions), checked before a re-run."""
    from studio.engine.data import scan_folder
    from studio.engine.record import rerun_differences

    scan = scan_folder(config.data.root, val_fraction=config.data.val_fraction,
                       seed=config.train.seed)
    return rerun_differences(run_dir, scan)
