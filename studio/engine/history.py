"""The run history: every run under one or more roots, what state it is in, how two differ.

Listing reads only small files (``config.toml``, ``run.json``, ``metrics.jsonl``, and the
sizes of the files), never a checkpoint, and imports no torch: 500 runs list in well under a
second (``benchmarks/bench_runs.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.engine.config import RunConfig
from studio.engine.errors import StudioError, explain_os_error
from studio.engine.record import process_alive, read_record
from studio.engine.runs import RunPaths, default_runs_root, read_metrics

log = logging.getLogger(__name__)

STATUSES = ("completed", "stopped", "failed", "running", "interrupted")
_OUTCOME_STATUS = {"completed": "completed", "early_stopped": "completed",
                   "cancelled": "stopped", "failed": "failed"}
STALE_SECONDS = 15 * 60  # a run on another machine that wrote nothing for this long has died
TRASH = ".trash"  # a trash folder inside a runs root, where the system has no trash


@dataclass(frozen=True)
class RunSummary:
    path: Path
    name: str
    status: str  # one of STATUSES
    backbone: str
    dataset: str
    freeze: str  # "head only", "all", "up to layer3", "+2 stages"
    epochs: int  # completed
    planned: int
    best_metric: float | None
    best_epoch: int | None
    monitor: str
    started: float | None  # seconds since the epoch
    seconds: float  # training time over every session
    device: str
    size_bytes: int
    message: str = ""  # the run's last word (its fit_end message)
    best_weights: str = ""  # with model EMA: "raw" or "ema", the weights best.pt holds

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        return data


def freeze_summary(config: RunConfig) -> str:
    spec = config.freeze
    text = {"head_only": "head only", "train_all": "all layers"}.get(
        spec.preset, f"up to {spec.up_to}" if spec.preset == "up_to" else spec.preset)
    if spec.freeze or spec.unfreeze:
        text += f" ({len(spec.freeze)} frozen, {len(spec.unfreeze)} unfrozen patterns)"
    if config.stages:
        text += f", +{len(config.stages)} stage{'s' if len(config.stages) != 1 else ''}"
    if config.lora.enabled:
        text += f", LoRA rank {config.lora.rank}"
    return text


def folder_size(path: Path, _seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes on disk under ``path``; a hard-linked file (``best.pt`` is one) counts once."""
    seen = set() if _seen is None else _seen
    total = 0
    for entry in os.scandir(path):
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                total += folder_size(Path(entry.path), seen)
                continue
            stat = entry.stat(follow_symlinks=False)
            if stat.st_nlink > 1:
                if (stat.st_dev, stat.st_ino) in seen:
                    continue
                seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total


def run_status(paths: RunPaths, records: list[dict[str, Any]],
               record: dict[str, Any] | None) -> tuple[str, str]:
    """(status, last message): the last fit's outcome; with no end, running while its
    process lives and interrupted once it died (or, on another machine, went silent)."""
    last_start = max((i for i, r in enumerate(records) if r.get("event") == "fit_start"),
                     default=-1)
    ends = [r for r in records[last_start + 1:] if r.get("event") == "fit_end"]
    if ends:
        end = ends[-1]
        return _OUTCOME_STATUS.get(str(end.get("outcome")), "failed"), str(end.get("message", ""))
    alive = process_alive(record.get("process") if record else None)
    if alive is None:  # another machine: judge by the last sign of life
        with contextlib.suppress(OSError):
            if time.time() - paths.metrics.stat().st_mtime < STALE_SECONDS:
                return "running", ""
        return "interrupted", "its process stopped writing; resume it to continue"
    if alive:
        return "running", ""
    return "interrupted", "its process ended without finishing; resume it to continue"


def summarize_run(run_dir: str | os.PathLike[str]) -> RunSummary | None:
    """What a run folder holds, from its small files; None if it is not a run."""
    paths = RunPaths(run_dir)
    try:
        config = RunConfig.load(paths.config)
    except StudioError:
        return None
    records = read_metrics(paths.root)
    record = read_record(paths.root)
    status, message = run_status(paths, records, record)
    epochs = {int(r["epoch"]): r for r in records if r.get("event") == "epoch"}
    starts = [r for r in records if r.get("event") == "fit_start"]
    ends = [r for r in records if r.get("event") == "fit_end"]
    best_epoch = ends[-1].get("best_epoch") if ends else None
    best_metric = ends[-1].get("best_metric") if ends else None
    if best_epoch is None and epochs:  # running or interrupted: the best so far
        best_epoch = next((e for e in sorted(epochs, reverse=True)
                           if epochs[e].get("best")), None)
        if best_epoch is not None:
            line = epochs[best_epoch]
            averaged = line.get("weights") == "ema"  # with model EMA the average's figure won
            best_metric = line.get(("ema_" if averaged else "") + config.train.monitor)
    best_weights = str(ends[-1].get("best_weights") or "") if ends else ""
    if not best_weights and best_epoch in epochs:
        best_weights = str(epochs[best_epoch].get("weights") or "")
    started = record["process"]["started"] if record and record.get("process") else None
    if record and record.get("sessions"):
        started = record["sessions"][0].get("started", started)
    if started is None and starts:
        started = starts[0].get("time")
    seconds = sum(float(r.get("seconds") or 0) for r in ends)
    if status == "running" and starts:
        seconds += max(0.0, time.time() - float(starts[-1].get("time") or time.time()))
    device = (record.get("device_name") or record.get("device")) if record else (
        starts[-1].get("device", "") if starts else "")
    return RunSummary(
        path=paths.root, name=paths.root.name, status=status,
        backbone=config.model.backbone, dataset=config.data.root,
        freeze=freeze_summary(config), epochs=max(epochs, default=0),
        planned=config.train.epochs, best_metric=best_metric, best_epoch=best_epoch,
        monitor=config.train.monitor, started=started, seconds=seconds, device=str(device),
        size_bytes=folder_size(paths.root), message=message, best_weights=best_weights)


def list_runs(roots: Iterable[str | os.PathLike[str]] | str | os.PathLike[str] | None = None
              ) -> list[RunSummary]:
    """The runs directly under each root (default: :func:`default_runs_root`), newest first.
    Hidden folders (the trash) are skipped."""
    if roots is None:
        roots = [default_runs_root()]
    elif isinstance(roots, str | os.PathLike):
        roots = [roots]
    runs: list[RunSummary] = []
    seen: set[Path] = set()
    for root in roots:
        base = Path(root).expanduser()
        if not base.is_dir():
            continue
        for child in base.iterdir():
            if child.name.startswith(".") or not child.is_dir():
                continue
            resolved = child.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            summary = summarize_run(child)
            if summary is not None:
                runs.append(summary)
    return sorted(runs, key=lambda r: (r.started or 0.0, r.name), reverse=True)


# ---------------------------------------------------------------------------------------------
# How two runs differ


@dataclass(frozen=True)
class FieldChange:
    field: str  # dotted: "optim.lr", "optim.groups[1].lr", "freeze.freeze"
    old: Any
    new: Any


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A RunConfig's fields as dotted names → plain values. A tuple of sections (parameter
    groups, stages) is its length under its own name, then each item as ``name[i].field``."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        name = f"{prefix}.{field.name}" if prefix else field.name
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, name))
        elif _holds_sections(hints.get(field.name)):
            out[name] = len(value)
            for index, item in enumerate(value):
                out.update(flatten(item, f"{name}[{index}]"))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _holds_sections(hint: Any) -> bool:
    args = typing.get_args(hint)
    return bool(args) and isinstance(args[0], type) and dataclasses.is_dataclass(args[0])


def config_diff(old: RunConfig, new: RunConfig) -> list[FieldChange]:
    """Every field that differs, in the order the config declares them."""
    a, b = flatten(old), flatten(new)
    names = list(a) + [name for name in b if name not in a]
    return [FieldChange(name, a.get(name), b.get(name)) for name in names
            if a.get(name) != b.get(name)]


def run_config(run_dir: str | os.PathLike[str]) -> RunConfig:
    return RunConfig.load(RunPaths(run_dir).config)


# ---------------------------------------------------------------------------------------------
# Renaming and deleting


class RunFolderError(StudioError):
    """A run folder that cannot be renamed or deleted as asked."""


def _refuse_running(summary: RunSummary | None, path: Path, action: str) -> None:
    if summary is None:
        raise RunFolderError(f"{path} is not a run folder; choose a folder that "
                             f"`studio train --out` wrote")
    if summary.status == "running":
        raise RunFolderError(f"{summary.name} is still running; stop it before you {action} it")


def rename_run(run_dir: str | os.PathLike[str], new_name: str) -> Path:
    """Rename a run folder in place; returns the new path."""
    path = Path(run_dir)
    _refuse_running(summarize_run(path), path, "rename")
    name = new_name.strip()
    if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith("."):
        raise RunFolderError(f"{new_name!r} cannot name a run folder; use letters, digits, "
                             f"'-' or '_' and no '/'")
    target = path.with_name(name)
    if target.exists():
        raise RunFolderError(f"{target} already exists; choose another name")
    try:
        path.rename(target)
    except OSError as error:
        reason, remedy = explain_os_error(error)
        raise RunFolderError(f"{path} could not be renamed: {reason}; {remedy}") from error
    return target


def trash_run(run_dir: str | os.PathLike[str]) -> Path | None:
    """Move a run to the system trash (send2trash, when installed) or else into a hidden
    ``.trash`` folder of its runs root; returns the trash path, or None for the system trash.
    Nothing is deleted outright."""
    path = Path(run_dir)
    _refuse_running(summarize_run(path), path, "delete")
    try:
        from send2trash import send2trash
    except ImportError:
        send2trash = None
    if send2trash is not None:
        try:
            send2trash(str(path))
            return None
        except Exception:  # noqa: BLE001 - no usable system trash here: use the folder
            log.info("the system trash refused %s; using the runs root's trash", path,
                     exc_info=True)
    try:
        trash = path.parent / TRASH
        trash.mkdir(exist_ok=True)
        target = trash / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(path), str(target))
        return target
    except OSError as error:
        reason, remedy = explain_os_error(error)
        raise RunFolderError(f"{path} could not be moved to the trash: {reason}; "
                             f"{remedy}") from error
