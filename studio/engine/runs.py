"""The run folder: its layout, where new runs go, its metrics log, and opening a finished run.

One owner for the folder a run writes::

    config.toml  labels.json  metrics.jsonl  checkpoints/last.pt  checkpoints/best.pt
    tensorboard/  (TensorBoard event files, when the tensorboard package is installed)

:class:`RunPaths` names the files, :class:`MetricsWriter` appends the run's story to
``metrics.jsonl`` and :func:`read_metrics` reads it back, :func:`default_runs_root` is the one
folder the app and the CLI both put new runs in, and :func:`open_run` rebuilds a checkpoint into
a model for export, evaluation and prediction. Errors are one sentence naming the folder or
file; ``action`` words them for the caller ("exporting").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from studio.engine.config import ConfigError, RunConfig
from studio.engine.config_io import atomic_write_text
from studio.engine.errors import FULL, DiskError, StudioError, explain_os_error
from studio.engine.events import (
    CacheReport,
    Callback,
    EpochEnded,
    FitEnded,
    FitStarted,
    StageStarted,
    WarningIssued,
)
from studio.format import first_line

if TYPE_CHECKING:  # torch loads only when a run is opened: listing and config errors stay fast
    import torch
    from torch import nn

    from studio.engine.images import Preprocessing

log = logging.getLogger(__name__)

CHECKPOINTS = ("best", "last")


class RunPaths:
    """Where a run folder keeps its files."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.root = Path(run_dir)
        self.config = self.root / "config.toml"
        self.labels = self.root / "labels.json"
        self.metrics = self.root / "metrics.jsonl"
        self.record = self.root / "run.json"  # what produced the run (engine/record.py)
        self.dataset_files = self.root / "dataset_files.json.gz"  # the fingerprinted file list
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"
        self.tensorboard = self.root / "tensorboard"  # event files: studio.engine.tensorboard

    def checkpoint(self, kind: str) -> Path:
        """``best`` or ``last``."""
        return self.best if kind == "best" else self.last

    def holds_a_run(self) -> bool:
        """True once an epoch has been saved; a run that never finished one can be redone."""
        return self.last.exists()

    def has_checkpoint(self) -> bool:
        return self.best.is_file() or self.last.is_file()


CheckpointIdentity = tuple[str, str, int]  # (resolved run folder, best|last, file mtime in ns)


def checkpoint_identity(run_dir: str | os.PathLike[str], checkpoint: str) -> CheckpointIdentity:
    """What tells one loaded checkpoint from another: a checkpoint rewritten since (a resumed
    run) is a different one. Caches of loaded models key by this, not by paths of their own."""
    path = RunPaths(run_dir).checkpoint(checkpoint)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = 0
    return str(Path(run_dir).resolve()), checkpoint, stamp


def default_runs_root() -> Path:
    """Where new runs go when no folder is given, for the app and the CLI alike:
    ``$STUDIO_RUNS_DIR``, else ``runs`` in the user data folder
    (``~/.local/share/finetune-studio/runs`` on Linux)."""
    if os.environ.get("STUDIO_RUNS_DIR"):
        return Path(os.environ["STUDIO_RUNS_DIR"])
    return platformdirs.user_data_path("finetune-studio", appauthor=False) / "runs"


def new_run_dir(root: str | os.PathLike[str] | None, backbone: str) -> Path:
    """A fresh folder name under ``root``: ``BACKBONE-YYYYmmdd-HHMMSS`` (``-2``… if taken)."""
    base = Path(root) if root is not None else default_runs_root()
    stem = f"{backbone}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base / stem, 1
    while candidate.exists():
        n += 1
        candidate = base / f"{stem}-{n}"
    return candidate


def create_run_folder(paths: RunPaths, config: RunConfig, scan: Any) -> None:
    """A new run's folder with its config (dataset folder resolved) and labels."""
    if paths.holds_a_run():
        raise StudioError(f"{paths.root} already holds a run; resume it with --resume "
                          f"{paths.root} or choose another --out folder")
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.metrics.unlink(missing_ok=True)  # left by an attempt with no epoch
        root = str(Path(scan.root).resolve())
        config.replace(data=dataclasses.replace(config.data, root=root)).save(paths.config)
        atomic_write_text(paths.labels, json.dumps(list(scan.classes), indent=2,
                                                   ensure_ascii=False) + "\n")
    except OSError as error:
        reason = explain_os_error(error)[0]
        todo = ("free space on that disk or choose another --out folder" if error.errno in FULL
                else "choose another --out folder, or set STUDIO_RUNS_DIR to a folder you may "
                     "write to")
        raise DiskError(f"the run folder {paths.root} cannot be written: {reason}; {todo}"
                        ) from error


def check_labels(paths: RunPaths, classes: Any) -> None:
    try:
        saved = json.loads(paths.labels.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StudioError(f"{paths.labels} is missing or damaged ({error})") from error
    if list(saved) != list(classes):
        raise StudioError(f"the dataset's classes {list(classes)} differ from the run's "
                          f"{saved}; resume with the same dataset")


def read_resume_checkpoint(paths: RunPaths, config: RunConfig) -> dict[str, Any]:
    """The last checkpoint of a run to continue to ``config.train.epochs``."""
    from studio.engine.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(paths.last)
    done = int(checkpoint["epoch"])
    if done >= config.train.epochs:
        raise StudioError(f"the run in {paths.root} already completed {done} "
                          f"epoch{'s' if done != 1 else ''}; pass --epochs with a larger "
                          f"number to train further")
    if RunConfig.load(paths.config) != config:  # e.g. --epochs extended the run
        config.save(paths.config)
    return checkpoint


# ---------------------------------------------------------------------------------------------
# metrics.jsonl


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsWriter(Callback):
    """Appends the run's story to ``metrics.jsonl``, one JSON object a line."""

    def __init__(self, paths: RunPaths, extra_end: dict[str, Any] | None = None) -> None:
        self.paths = paths
        self.extra_end = extra_end if extra_end is not None else {}  # facts known at the end

    def _write(self, record: dict[str, Any]) -> None:
        if not self.paths.root.is_dir():
            return  # the fit failed before the run folder existed
        with open(self.paths.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def on_fit_start(self, event: FitStarted) -> None:
        self._write({"event": "fit_start", "start_epoch": event.start_epoch,
                     "epochs": event.epochs, "device": event.device,
                     "precision": event.precision, "processes": event.processes,
                     "trainable_params": event.trainable_params,
                     "total_params": event.total_params, "time": time.time()})

    def on_stage_start(self, event: StageStarted) -> None:
        self._write({"event": "stage", "epoch": event.epoch, "stage": event.index,
                     "trainable_params": event.trainable_params, "groups": list(event.groups)})

    def on_epoch_end(self, event: EpochEnded) -> None:
        self._write({k: _nan_to_none(v) for k, v in event.to_json().items()})

    def on_warning(self, event: WarningIssued) -> None:  # e.g. memory ran out: the batch split
        self._write({"event": "warning", "message": event.message, "time": time.time()})

    def on_cache(self, event: CacheReport) -> None:
        if event.state != "building":
            self._write({"event": "cache", "kind": event.kind, "state": event.state,
                         "images": event.images, "megabytes": round(event.megabytes, 3),
                         "seconds": round(event.seconds, 3), "detail": event.detail})

    def on_fit_end(self, event: FitEnded) -> None:
        record = {"event": "fit_end", "outcome": event.outcome.value,
                  "message": event.message, "epochs_completed": event.epochs_completed,
                  "best_epoch": event.best_epoch, "best_metric": event.best_metric,
                  "seconds": event.seconds, "time": time.time(), **self.extra_end}
        if event.best_weights:  # with model EMA: which weights best.pt holds
            record["best_weights"] = event.best_weights
        try:
            self._write(record)
        except OSError:  # a full disk ended the run: its end is told, the record is lost
            log.warning("could not record the end of the run in %s", self.paths.metrics,
                        exc_info=True)


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of a run's ``metrics.jsonl``; a damaged line (a run killed mid-write) is
    skipped, a missing file is no records."""
    path = RunPaths(run_dir).metrics
    records: list[dict[str, Any]] = []
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
    return records


def epoch_records(run_dir: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """Epoch number → its metrics line; a resumed run may repeat an epoch, the last counts."""
    return {int(r["epoch"]): r for r in read_metrics(run_dir) if r.get("event") == "epoch"}


class RunError(StudioError):
    """A run folder or checkpoint that cannot be used."""


@dataclass
class OpenedRun:
    run_dir: Path
    checkpoint: str
    checkpoint_path: Path
    model: nn.Module  # in eval mode, on the CPU
    labels: list[str]
    preprocessing: dict[str, Any]
    config: RunConfig
    config_text: str
    epoch: int | None
    best: dict[str, Any]
    data_root: str

    def prep(self) -> Preprocessing:
        return preprocessing_from_json(self.preprocessing)


def open_run(run_dir: str | os.PathLike[str], checkpoint: str = "best",
             action: str = "using it", error: type[StudioError] = RunError) -> OpenedRun:
    """Rebuild a run's architecture (weights "none") and load its checkpoint strictly."""
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint must be best or last; got {checkpoint!r}")
    paths = RunPaths(run_dir)
    if not paths.root.is_dir():
        raise error(f"run folder {paths.root} does not exist; pass the folder that "
                    f"`studio train --out` wrote")
    if not paths.last.is_file():
        raise error(f"{paths.root} holds no checkpoint (checkpoints/last.pt); train at "
                    f"least one epoch before {action}")
    path = paths.checkpoint(checkpoint)
    if not path.is_file():
        raise error(f"{paths.root} has no best checkpoint ({path.name}); use the last "
                    f"one with --checkpoint last")
    from studio.engine.checkpoint import evaluated_state, load_checkpoint

    payload = load_checkpoint(path)
    try:
        text = str(payload["config"])
        labels = [str(name) for name in payload["labels"]]
        prep = dict(payload["preprocessing"])
        state = evaluated_state(payload)  # the EMA weights where they did better
    except (KeyError, TypeError, ValueError) as missing:
        raise error(f"checkpoint {path} lacks its {missing} entry; it was not written by "
                    f"this version of Finetune Studio") from missing
    config = RunConfig.from_toml(text, source=f"the config inside {path}")
    backbone = payload.get("backbone", config.model.backbone)
    if backbone != config.model.backbone:
        raise error(f"checkpoint {path} holds backbone {backbone!r} but its config names "
                    f"{config.model.backbone!r}")
    model = rebuild_model(config, labels, prep, state, path, error)
    return OpenedRun(paths.root, checkpoint, path, model, labels, prep, config, text,
                     payload.get("epoch"), dict(payload.get("best") or {}),
                     data_root(paths.config, config))


def rebuild_model(config: RunConfig, labels: list[str], prep: dict[str, Any],
                  state: dict[str, torch.Tensor], path: Path,
                  error: type[StudioError] = RunError) -> nn.Module:
    from studio.engine.backbones import backbone_info, build_model, is_weights_file

    architecture = config.model.__class__(backbone=config.model.backbone, weights="none",
                                          head=config.model.head)
    size = config.data.image_size or int(prep["crop"])
    built = build_model(architecture, len(labels), size)
    model = built.model
    # torchvision turns on input re-normalisation for Inception v3 and GoogLeNet when it loads
    # their ImageNet weights; it is no parameter, so a rebuild without weights must set it.
    if backbone_info(config.model.backbone).family in ("inception", "googlenet") \
            and config.model.weights != "none" and not is_weights_file(config.model.weights):
        model.transform_input = True  # type: ignore[assignment]
    if config.lora.enabled:  # the checkpoint holds the adapters beside the base weights
        from studio.engine.lora import attach

        attach(model, config.lora, built.head, size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as failure:
        first = first_line(failure)
        raise error(f"checkpoint {path} does not fit {config.model.backbone} with "
                    f"{len(labels)} classes ({first})") from failure
    if config.lora.enabled:  # evaluate, predict and export see the plain merged backbone
        from studio.engine.lora import merge_adapters

        merge_adapters(model)
    return model.eval()


def data_root(config_path: Path, config: RunConfig) -> str:
    """The trainer writes the resolved dataset folder to config.toml; prefer it."""
    with contextlib.suppress(StudioError, OSError):
        saved = RunConfig.load(config_path)
        if saved.data.root:
            return saved.data.root
    return config.data.root


def preprocessing_from_json(prep: dict[str, Any]) -> Preprocessing:
    from studio.engine.images import Preprocessing

    return Preprocessing(int(prep["resize"]), int(prep["crop"]),
                         tuple(float(v) for v in prep["mean"]),  # type: ignore[arg-type]
                         tuple(float(v) for v in prep["std"]),  # type: ignore[arg-type]
                         str(prep.get("interpolation", "bilinear")))
