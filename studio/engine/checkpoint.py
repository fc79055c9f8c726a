"""Checkpoints: written atomically, read without ever running code, keyed by parameter name.

A checkpoint holds the full state needed to continue a run exactly: model, optimizer state per
parameter *name* (so a stage that unfroze layers does not scramble it), the scheduler position,
the grad scaler, epoch and step, RNG states, the freeze spec in force and the groups.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from studio.engine.config import FILE_MODE
from studio.engine.errors import StudioError

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
