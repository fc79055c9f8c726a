"""Checkpoints: written atomically, read without ever running code, keyed by parameter name.

A checkpoint holds the full state needed to continue a run exactly: model, optimizer state per
parameter *name* (so a stage that unfroze layers does not scramble it), the scheduler position,
the grad scaler, epoch and step, RNG states, the freeze spec in force and the groups.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from studio.engine.config_io import FILE_MODE
from studio.engine.errors import DiskError, StudioError, explain_os_error
from studio.engine.events import CheckpointSaved

if TYPE_CHECKING:
    from studio.engine.ema import ModelEma
    from studio.engine.parts import Parts
    from studio.engine.runs import RunPaths

FORMAT = "finetune-studio-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(StudioError):
    """A checkpoint that is missing, damaged, or not one of ours."""


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``: a
    process killed mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; anything else is a clear CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: the run stopped before its "
                              f"first epoch finished, so there is nothing to resume; start it "
                              f"again with the same --out folder")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            zipfile.BadZipFile) as error:
        raise CheckpointError(f"checkpoint {path} is damaged or not a Finetune Studio "
                              f"checkpoint ({str(error).splitlines()[0]})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a Finetune Studio checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer Finetune Studio; please upgrade")
    return payload


# ---------------------------------------------------------------------------------------------
# Optimizer state by parameter name


def optimizer_state_by_name(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    groups, state = [], {}
    for group in optimizer.param_groups:
        names = group["param_names"]
        groups.append({k: v for k, v in group.items() if k not in ("params", "param_names")}
                      | {"param_names": list(names)})
        for name, param in zip(names, group["params"], strict=True):
            if param in optimizer.state:
                state[name] = dict(optimizer.state[param])
    return {"groups": groups, "state": state}


def restore_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> int:
    """Put saved per-parameter state back by name; returns how many parameters got state.

    Group hyperparameters are not restored: the trainer sets learning rates from the schedule.
    """
    restored = 0
    for group in optimizer.param_groups:
        for name, param in zip(group["param_names"], group["params"], strict=True):
            entry = saved["state"].get(name)
            if entry is None:
                continue
            optimizer.state[param] = {
                k: (v.to(param.device) if isinstance(v, torch.Tensor) and v.dim() > 0 else v)
                for k, v in entry.items()}
            restored += 1
    return restored


# ---------------------------------------------------------------------------------------------
# Random number generators


def capture_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


def copy_checkpoint(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy ``source`` over ``target`` atomically (last.pt → best.pt)."""
    import shutil

    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def link_checkpoint(source: Path, target: Path) -> None:
    """``target`` becomes the same file as ``source`` (a hard link, atomically; a copy where
    the file system has no links). The next save of ``source`` replaces its name with a new
    file, so the link keeps the old one: best.pt costs no second write."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        copy_checkpoint(source, target)
        return
    try:
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def snapshot(value: Any) -> Any:
    """A copy of a payload whose tensors the next optimizer step cannot change."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: snapshot(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(snapshot(item) for item in value)
    return value


class CheckpointWriter:
    """Writes a run's checkpoints on a thread of its own, so the loop does not wait for the disk.

    The loop hands over a snapshot (the live tensors change with the next step). One write is
    in flight at a time: a second hand-over waits for the first, which bounds memory to one
    snapshot. Each write is atomic, so a kill mid-write keeps the previous checkpoint; a write
    that fails (a full disk) is raised on the loop's thread at the next hand-over or at
    :meth:`finish`, as a sentence naming the checkpoint that was kept.
    """

    def __init__(self, paths: RunPaths, background: bool = True) -> None:
        self.paths = paths
        self.saved_epoch: int | None = None  # the epoch last.pt holds on disk
        self._pool = ThreadPoolExecutor(1, "checkpoint") if background else None
        self._pending: Future[list[CheckpointSaved]] | None = None
        self._pending_epoch = 0

    def submit(self, epoch: int, payload: dict[str, Any], best: bool,
               unchanging: Collection[str] = ()) -> list[CheckpointSaved]:
        """Start writing ``payload`` as epoch ``epoch`` (and best.pt when ``best``); returns
        the writes that completed since the last call. ``unchanging`` names model tensors that
        cannot change before the write ends (parameters frozen now and in the next epoch): they
        are written from the live tensors, which saves a copy of a frozen backbone."""
        done = self.finish()
        keep = set(unchanging)
        model = {name: tensor if name in keep else snapshot(tensor)
                 for name, tensor in payload["model"].items()}
        frozen = {**snapshot({k: v for k, v in payload.items() if k != "model"}), "model": model}
        self._pending_epoch = epoch
        if self._pool is None:
            future: Future[list[CheckpointSaved]] = Future()
            try:
                future.set_result(self._write(epoch, frozen, best))
            except BaseException as error:  # noqa: BLE001 - raised by finish()
                future.set_exception(error)
            self._pending = future
        else:
            self._pending = self._pool.submit(self._write, epoch, frozen, best)
        return done

    def finish(self) -> list[CheckpointSaved]:
        """Wait for the write in flight; its events, or a DiskError if it failed."""
        pending, self._pending = self._pending, None
        if pending is None:
            return []
        try:
            return pending.result()
        except OSError as error:
            raise DiskError(self._failed(error)) from error

    def harvest(self) -> list[CheckpointSaved]:
        """The events of a write that has completed, without waiting (a failure waits for
        :meth:`finish`, which every process reaches together)."""
        pending = self._pending
        if pending is None or not pending.done() or pending.exception() is not None:
            return []
        self._pending = None
        return pending.result()

    def close(self) -> None:
        """Finish quietly (the run is ending for another reason) and stop the thread."""
        try:
            self.finish()
        except DiskError:
            pass
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _write(self, epoch: int, payload: dict[str, Any], best: bool) -> list[CheckpointSaved]:
        paths = self.paths
        save_checkpoint(paths.last, payload)
        self.saved_epoch = epoch
        events = [CheckpointSaved(epoch, "last", str(paths.last))]
        if best:
            link_checkpoint(paths.last, paths.best)
            events.append(CheckpointSaved(epoch, "best", str(paths.best)))
        return events

    def _failed(self, error: OSError) -> str:
        reason, remedy = explain_os_error(error)
        where = error.filename or self.paths.last
        kept = (f"the last good checkpoint, of epoch {self.saved_epoch}, is kept"
                if self.saved_epoch is not None else "no earlier epoch had been saved")
        return (f"saving the checkpoint of epoch {self._pending_epoch} to {where} failed: "
                f"{reason}; {remedy}, then continue with `studio train --resume "
                f"{self.paths.root}` ({kept})")


# ---------------------------------------------------------------------------------------------
# A run's full state


@dataclass
class FitState:
    """Where a fit is: what a checkpoint must hold besides the tensors."""

    epoch: int = 0  # last completed epoch
    global_step: int = 0  # optimizer steps taken
    best_epoch: int | None = None
    best_metric: float | None = None
    bad_epochs: int = 0
    best_weights: str = "raw"  # with model EMA: which weights won the best epoch

    def track(self, epoch: int, value: float | None, higher: bool,
              weights: str = "raw") -> bool:
        """Count ``epoch``'s monitored value (that of ``weights``); True when it is the best
        so far. None (no validation images) makes the latest epoch the best; a non-finite
        value never is."""
        if value is None:
            self.best_epoch, self.best_metric, self.best_weights = epoch, None, weights
            return True
        best = self.best_metric
        better = math.isfinite(value) and (
            best is None or (value > best if higher else value < best))
        if better:
            self.best_epoch, self.best_metric, self.bad_epochs = epoch, value, 0
            self.best_weights = weights
        else:
            self.bad_epochs += 1
        return better


def run_checkpoint(parts: Parts, state: FitState, scaler: Any, epoch: int,
                   rngs: list[dict[str, Any]], ema: ModelEma | None = None,
                   weights: str = "raw") -> dict[str, Any]:
    """Everything needed to continue exactly, with any number of processes: the plain
    model's state (no DDP ``module.`` prefix), the optimizer state by parameter name, the
    schedule position, every rank's RNG state, and what is needed to rebuild the model.

    With model EMA, ``"ema"`` holds the average (under the model's own keys) and where it is,
    and ``"weights"`` names the set evaluate and export use (this epoch's better one); the
    trained weights stay under ``"model"``, which is what a resume continues."""
    cfg, optimizer = parts.config, parts.optimizer
    assert optimizer is not None
    return {
        "model": parts.model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "weights": weights if ema is not None else "raw",
        "optimizer": optimizer_state_by_name(optimizer),
        "scheduler": {"schedule": cfg.optim.schedule, "global_step": state.global_step},
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "global_step": state.global_step,
        "rng": rngs[0],
        "rng_ranks": rngs,
        "processes": parts.placement.world_size,
        "frozen": sorted(parts.frozen),
        "groups": [{"name": g["name"], "param_names": list(g["param_names"]),
                    "lr": g["studio_base_lr"], "weight_decay": g["weight_decay"]}
                   for g in optimizer.param_groups],
        "best": {"epoch": state.best_epoch, "metric": state.best_metric,
                 "bad_epochs": state.bad_epochs, "weights": state.best_weights},
        "labels": list(parts.scan.classes),
        "backbone": parts.built.backbone,
        "head": parts.built.head,
        "preprocessing": parts.built.preprocessing.to_json(),
        "config": cfg.to_toml(),
    }


def evaluated_state(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model state a checkpoint offers evaluate and export: the EMA weights where its
    ``"weights"`` entry says they did better, else the trained ones."""
    ema = payload.get("ema")
    if payload.get("weights") == "ema" and isinstance(ema, dict) and "model" in ema:
        return ema["model"]
    return payload["model"]


def restore_run(parts: Parts, state: FitState, scaler: Any, checkpoint: dict[str, Any],
                path: Path, ema: ModelEma | None = None) -> None:
    """Put a :func:`run_checkpoint` back into freshly built parts (and ``ema``: a
    checkpoint without an average starts it from the restored weights)."""
    placement = parts.placement
    assert parts.optimizer is not None
    if checkpoint.get("backbone") != parts.built.backbone:
        raise StudioError(f"{path} belongs to backbone {checkpoint.get('backbone')!r}, not "
                          f"{parts.built.backbone!r}")
    try:
        parts.model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise StudioError(f"{path} does not fit this model "
                          f"({str(error).splitlines()[0]})") from error
    restore_optimizer_state(parts.optimizer, checkpoint["optimizer"])
    if ema is not None:
        saved = checkpoint.get("ema")
        try:
            if saved:
                ema.load_state_dict(saved)
            else:
                ema.module.load_state_dict(parts.model.state_dict())
        except (RuntimeError, KeyError) as error:
            raise StudioError(f"{path} holds an EMA average that does not fit this model "
                              f"({str(error).splitlines()[0]})") from error
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    best = checkpoint.get("best", {})
    state.epoch = int(checkpoint["epoch"])
    state.global_step = int(checkpoint["global_step"])
    state.best_epoch = best.get("epoch")
    state.best_metric = best.get("metric")
    state.bad_epochs = int(best.get("bad_epochs", 0))
    state.best_weights = str(best.get("weights") or "raw")
    ranks = checkpoint.get("rng_ranks") or [checkpoint["rng"]]
    if len(ranks) == placement.world_size:
        restore_rng(ranks[placement.rank])
    else:  # resumed with another number of processes: a distinct stream per rank
        restore_rng(ranks[0])
        if placement.rank:
            torch.manual_seed(parts.config.train.seed * 7907 + placement.rank + state.epoch)
