"""The training loop. Pure torch: it emits events to callbacks and knows nothing of Qt or a CLI.

``Trainer(config, run_dir, callbacks).fit(stop, pause)`` runs a RunConfig into a run folder (its
layout is :mod:`studio.engine.runs`'s) and returns the :class:`FitEnded` event. Errors a user can
cause end the fit with ``Outcome.FAILED`` and one sentence; they are never raised out of ``fit``.

The same loop runs alone or as one process of a distributed run: the :class:`Placement` shards
the data, wraps the model, reduces the metrics and makes every process stop at the same batch.
Only the main process (rank 0) writes the run folder and emits events.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from studio.engine import learning
from studio.engine.caching import Feed, FeedPlanner
from studio.engine.checkpoint import (
    CheckpointWriter,
    FitState,
    capture_rng,
    restore_run,
    run_checkpoint,
)
from studio.engine.config import RunConfig
from studio.engine.data import DatasetScan
from studio.engine.ema import ModelEma, better_weights, ema_figures
from studio.engine.errors import DiskError, StudioError, explain_os_error, os_error_sentence
from studio.engine.events import (
    BatchEnded,
    Callback,
    CheckpointSaved,
    EpochEnded,
    FitEnded,
    FitStarted,
    Outcome,
    StageStarted,
    WarningIssued,
)
from studio.engine.features import trim_memory
from studio.engine.logs import log_unexpected
from studio.engine.memory import MicroBatcher, out_of_memory_sentence
from studio.engine.metrics import Validation
from studio.engine.mixing import Mixer
from studio.engine.optim import Schedule, Stepper, current_lrs
from studio.engine.params import count_params
from studio.engine.parts import Parts, build_parts, shared_state, unused_trainable
from studio.engine.record import write_record
from studio.engine.runs import (
    MetricsWriter,
    RunPaths,
    check_labels,
    create_run_folder,
    read_resume_checkpoint,
)
from studio.engine.runtime import MainRankError, Placement, device_label, seed_everything
from studio.engine.tensorboard import tensorboard_callbacks
from studio.engine.validation import validate
from studio.format import first_line, plural

log = logging.getLogger(__name__)

EMIT_INTERVAL = 0.05  # seconds between BatchEnded events: at most ~20 a second


class NonFiniteLoss(StudioError):
    pass


class Trainer:
    """Runs one RunConfig into one run folder. Create it, then call :meth:`fit` once."""

    def __init__(self, config: RunConfig | None, run_dir: str | os.PathLike[str],
                 callbacks: Iterable[Callback] = (), *, resume: bool = False,
                 scan: DatasetScan | None = None, placement: Placement | None = None,
                 command: Sequence[str] | str = "app", rerun_of: str | None = None,
                 hash_content: bool = False) -> None:
        self.config = config  # None on a process that receives it from rank 0
        self.paths = RunPaths(run_dir)
        self.callbacks: list[Callback] = list(callbacks)
        self.resume = resume
        self.scan = scan
        self.placement = placement
        self.state = FitState()
        self.parts: Parts | None = None
        self.writer: CheckpointWriter | None = None  # rank 0's, from setup on
        self.ema: ModelEma | None = None  # the weights' moving average, with train.ema
        self._weights = "raw"  # which of raw and EMA did better in the latest epoch
        self._ends: dict[str, Any] = {}  # facts for the fit_end record (replicas)
        self.command = command  # what run.json says started the run: a command line, or "app"
        self.rerun_of = rerun_of
        self.hash_content = hash_content  # run.json also hashes every image's bytes
        self.told_by_main = False  # the failure was rank 0's, and rank 0 reported it
        self._started = time.monotonic()

    @classmethod
    def resume_run(cls, run_dir: str | os.PathLike[str], epochs: int | None = None,
                   callbacks: Iterable[Callback] = (), placement: Placement | None = None,
                   processes: int | None = None, command: Sequence[str] | str = "app"
                   ) -> Trainer:
        """A trainer that continues ``run_dir`` from its last completed epoch (with
        ``epochs`` as the new end, and ``processes`` as now, if given)."""
        config = None
        if placement is None or placement.is_main:
            paths = RunPaths(run_dir)
            if not paths.config.is_file():
                raise StudioError(f"{paths.root} is not a run folder (it has no config.toml); "
                                  f"resume the folder that `studio train --out` wrote")
            config = RunConfig.load(paths.config)
            changes = {"epochs": epochs, "processes": processes}
            changes = {k: v for k, v in changes.items() if v is not None}
            if changes:
                config = config.replace(train=dataclasses.replace(config.train, **changes))
        return cls(config, run_dir, callbacks, resume=True, placement=placement,
                   command=command)

    @property
    def model(self) -> nn.Module:
        assert self.parts is not None
        return self.parts.model

    @property
    def train_loader(self) -> Any:
        assert self.parts is not None
        return self.parts.train_loader

    # -- public ---------------------------------------------------------------------------

    def fit(self, stop: threading.Event | None = None,
            pause: threading.Event | None = None) -> FitEnded:
        """Train until done, stopped (``stop`` set: answers within one batch), or failed.
        While ``pause`` is set the loop waits between batches."""
        stop = stop or threading.Event()
        self._started = time.monotonic()
        try:
            self._setup()
            return self._loop(stop, pause)
        except StudioError as error:
            self.told_by_main = isinstance(error, MainRankError)
            return self._end(Outcome.FAILED, str(error))
        except torch.OutOfMemoryError:  # outside what MicroBatcher redoes: an optimizer step, …
            log.info("training ran out of memory", exc_info=True)
            assert self.config is not None
            return self._end(Outcome.FAILED, out_of_memory_sentence(
                self.config, self.parts.precision if self.parts else self.config.train.precision,
                self.placement.device if self.placement else torch.device("cpu"),
                f"in epoch {self.state.epoch + 1}" if self.parts else "while building the model",
                self._kept()))
        except OSError as error:  # a disk or a file, while writing metrics or reading images
            log.info("training stopped by an OS error", exc_info=True)
            return self._end(Outcome.FAILED, os_error_sentence(
                error, "training", f"{explain_os_error(error)[1]}, then continue with "
                f"`studio train --resume {self.paths.root}`{self._kept()}"))
        except Exception as error:  # a bug or a lost process, not a user error: log it
            if self.placement is not None and self.placement.distributed:
                log.exception("training failed")
                return self._end(Outcome.FAILED, f"rank {self.placement.rank} lost contact with "
                                 f"the other processes ({type(error).__name__}: "
                                 f"{first_line(error)}); the run resumes from its last epoch")
            return self._end(Outcome.FAILED, log_unexpected(log, "training failed", error))
        finally:
            if self.writer is not None:
                self.writer.close()
            if self.parts is not None:
                self.parts.close()
            self._release()
            trim_memory()

    def _release(self) -> None:
        """Drop the model, optimizer, loaders and feeds: an app session runs many fits, and a
        finished one must not keep its tensors (the checkpoints hold what is needed)."""
        self.parts = None
        for name in ("feed", "forward", "planner", "stepper", "mixer", "micro", "_ddp", "ema"):
            if hasattr(self, name):
                setattr(self, name, None)

    # -- setup ----------------------------------------------------------------------------

    def _setup(self) -> None:
        self.placement = placement = self.placement or Placement.single(
            self.config.train.device if self.config else "auto")
        self.config = cfg = placement.broadcast_object(self.config)
        self.paths = RunPaths(placement.broadcast_object(str(self.paths.root)))
        if placement.is_main:
            self.callbacks.insert(0, MetricsWriter(self.paths, self._ends))
            self.callbacks += tensorboard_callbacks(self.paths, cfg, lambda: self.parts)
            self.writer = CheckpointWriter(self.paths)
        else:
            self.callbacks = []  # rank 0 tells the story
        checkpoint = (placement.on_main(lambda: read_resume_checkpoint(self.paths, cfg))
                      if self.resume else None)
        start = 1 if checkpoint is None else int(checkpoint["epoch"]) + 1
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        parts = self.parts = build_parts(cfg, self.scan, placement, epoch=start)
        placement.broadcast_module(parts.model)  # every rank starts from rank 0's weights
        if placement.rank:  # …and draws its own augmentations
            seed_everything(cfg.train.seed + placement.rank, cfg.train.deterministic)
        if cfg.train.ema:  # of the plain model, so every rank averages the same weights
            self.ema = ModelEma(parts.model, cfg.train.ema, cfg.train.ema_warmup)
        if self.resume:
            placement.on_main(lambda: check_labels(self.paths, parts.scan.classes))
        steps = len(parts.train_loader)
        assert parts.optimizer is not None
        self.stepper = Stepper(parts.optimizer,
                               Schedule(cfg.optim, math.ceil(steps / cfg.train.accumulate),
                                        cfg.train.epochs),
                               cfg.train.grad_clip, fp16=parts.precision == "fp16")
        learning.watch(self.stepper, self.callbacks, self._emit)  # the live Layers columns
        if checkpoint is not None:
            self._restore(checkpoint)
            if self.writer is not None:
                self.writer.saved_epoch = self.state.epoch
        else:
            placement.on_main(lambda: create_run_folder(self.paths, cfg, parts.scan))
        placement.on_main(lambda: self._write_record(checkpoint is not None))
        self.start_epoch = start
        self.planner = FeedPlanner(parts, lambda report: self._emit("on_cache", report))
        self.mixer = Mixer(cfg.train, len(parts.scan.classes))
        self.micro = MicroBatcher(  # splits batches when memory runs out: memory.py
            self.stepper, parts.criterion, parts.autocast, parts.device, cfg, parts.precision,
            warn=lambda message: self._emit("on_warning", WarningIssued(message)),
            kept=self._kept, distributed=placement.distributed)
        self.feed: Feed = self.planner.images()
        self.forward: nn.Module = parts.model
        self._ddp: Any = None
        self._feed_pending = True
        counts = count_params(parts.model, parts.frozen)
        self._emit("on_fit_start", FitStarted(
            run_dir=str(self.paths.root), epochs=cfg.train.epochs, start_epoch=start,
            steps_per_epoch=steps, train_images=len(parts.scan.splits["train"]),
            val_images=len(parts.scan.splits["val"]), classes=tuple(parts.scan.classes),
            device=device_label(parts.device), precision=parts.precision,
            channels_last=parts.channels_last, trainable_params=counts.trainable,
            total_params=counts.total, processes=placement.world_size,
            adapter_params=parts.lora.adapter_params if parts.lora else 0,
            adapted_layers=len(parts.lora.layers) if parts.lora else 0))
        for message in [*parts.scan.warnings, *parts.built.notes]:
            self._emit("on_warning", WarningIssued(message))
        self._announce_stage(start)

    def _write_record(self, resumed: bool) -> None:
        parts, placement = self.parts, self.placement
        assert parts is not None and placement is not None
        try:
            write_record(self.paths.record, self.paths.dataset_files, config=parts.config,
                         scan=parts.scan, device=str(parts.device), precision=parts.precision,
                         processes=placement.world_size, command=self.command,
                         rerun_of=self.rerun_of, resumed=resumed,
                         hash_content=self.hash_content)
        except OSError as error:
            raise DiskError(os_error_sentence(error, "writing the run's record")) from error

    def _announce_stage(self, epoch: int) -> None:
        parts = self.parts
        assert parts is not None and parts.optimizer is not None
        counts = count_params(parts.model, parts.frozen)
        names = tuple(g["name"] for g in parts.optimizer.param_groups if g["params"])
        self._emit("on_stage_start", StageStarted(epoch, parts.stage_index, counts.trainable,
                                                  counts.total, names))

    def _use(self, feed: Feed) -> None:
        """Train through ``feed``: wrapped for this placement (DDP only where trainable
        parameters are unused), compiled when asked."""
        parts, placement = self.parts, self.placement
        assert parts is not None and placement is not None
        self.feed = feed
        module = feed.module
        if placement.distributed:
            parts.train_mode(module)
            unused = unused_trainable(module, feed.probe().to(parts.device))
            module = self._ddp = placement.wrap_model(module, find_unused=bool(unused))
        self.forward = torch.compile(module) if parts.config.train.compile else module

    # -- the loop -------------------------------------------------------------------------

    def _loop(self, stop: threading.Event, pause: threading.Event | None) -> FitEnded:
        cfg, parts, placement = self.config, self.parts, self.placement
        assert cfg is not None and parts is not None and placement is not None
        for epoch in range(self.start_epoch, cfg.train.epochs + 1):
            if parts.enter_stage(epoch):
                self._announce_stage(epoch)
                self._feed_pending = True
            if self._feed_pending:
                self._feed_pending = False
                feed = self.planner.prepare(epoch, stop)
                if placement.agree(feed is None):
                    return self._cancelled(epoch)
                assert feed is not None
                self._use(feed)
            began = time.monotonic()
            trained = self._train_epoch(epoch, stop, pause)
            if trained is None:
                return self._cancelled(epoch)
            train_loss, train_acc, images, busy = trained
            validated = self._validate(stop)
            averaged = None if self.ema is None or validated is None else \
                self._validate(stop, self.ema.view(self.feed.module, parts.model))
            if validated is None or (self.ema is not None and averaged is None):
                return self._cancelled(epoch)
            is_best = self._track_best(epoch, validated, averaged)
            self.state.epoch = epoch
            self._emit("on_epoch_end", EpochEnded(
                epoch=epoch, train_loss=train_loss, train_acc=train_acc,
                val_loss=validated.val_loss, val_acc=validated.val_acc,
                lr=current_lrs(parts.optimizer),  # type: ignore[arg-type]
                seconds=time.monotonic() - began, val_images=validated.images,
                images_per_second=images / busy if busy > 0 else 0.0, is_best=is_best,
                macro_f1=validated.macro_f1, balanced_acc=validated.balanced_acc,
                **ema_figures(averaged), weights=self._weights if self.ema else ""))
            self._save(epoch, is_best)
            patience = cfg.train.early_stopping
            if patience and self.state.bad_epochs >= patience:
                return self._finish(Outcome.EARLY_STOPPED,
                                    f"stopped early after epoch {epoch}: {cfg.train.monitor} did "
                                    f"not improve for {plural(patience, 'epoch')}")
        return self._finish(Outcome.COMPLETED, f"completed {plural(cfg.train.epochs, 'epoch')}")

    def _cancelled(self, epoch: int) -> FitEnded:
        done = self.state.epoch
        if done:
            resume = f"the run resumes from epoch {done + 1} with --resume {self.paths.root}"
        else:
            resume = "no epoch had finished, so there is nothing to resume"
        return self._finish(Outcome.CANCELLED, f"stopped during epoch {epoch}; {resume}")

    def _wait_while_paused(self, stop: threading.Event, pause: threading.Event | None) -> float:
        if pause is None or not pause.is_set():
            return 0.0
        began = time.monotonic()
        while pause.is_set() and not stop.is_set():
            stop.wait(0.05)
        return time.monotonic() - began

    def _train_epoch(self, epoch: int, stop: threading.Event, pause: threading.Event | None
                     ) -> tuple[float, float, int, float] | None:
        cfg, parts, placement = self.config, self.parts, self.placement
        assert cfg is not None and parts is not None and placement is not None
        optimizer, feed, forward = parts.optimizer, self.feed, self.forward
        assert optimizer is not None
        parts.train_mode(feed.module, forward)
        parts.set_epoch(epoch)
        feed.set_epoch(cfg.train.seed * 1000 + epoch)
        steps, accumulate = len(feed.train), cfg.train.accumulate
        device = parts.device
        trainable = parts.trainable()
        loss_sum = torch.zeros((), device=device)
        epoch_loss = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        window, seen, window_start = 0, 0, 1
        began = last_emit = time.monotonic()
        paused = 0.0
        optimizer.zero_grad(set_to_none=True)
        for step, (images, targets) in enumerate(feed.train, start=1):
            paused += self._wait_while_paused(stop, pause)
            if placement.agree(stop.is_set()):
                return None
            images, targets = parts.to_device(images, targets)
            images, goal, labels = self.mixer(images, targets, epoch)
            stepping = step % accumulate == 0 or step == steps
            loss, logits = self.micro.train(forward, images, goal, accumulate=accumulate,
                                            stepping=stepping, ddp=self._ddp, epoch=epoch,
                                            step=step)
            if stepping:
                self.stepper.step(trainable, self.state.global_step)
                self.state.global_step += 1
                if self.ema is not None:
                    self.ema.update(parts.model)
            batch = targets.shape[0]
            loss_sum += loss.detach().float() * batch
            epoch_loss += loss.detach().float() * batch
            correct += (logits.detach().argmax(1) == labels).sum()  # mixed: the dominant one
            window += batch
            seen += batch
            now = time.monotonic()
            if now - last_emit >= EMIT_INTERVAL or step == steps:
                mean = (loss_sum / window).item()  # the one sync per logging step
                if not math.isfinite(mean):
                    where = f"step {step}" if window_start == step else \
                        f"steps {window_start}–{step}"
                    raise NonFiniteLoss(
                        f"the loss became {mean} in epoch {epoch} at {where}; training stopped "
                        f"and the last good checkpoint is kept — lower the learning rate or "
                        f"turn on gradient clipping")
                busy = max(1e-9, now - began - paused)
                remaining = (steps - step) + (cfg.train.epochs - epoch) * steps
                self._emit("on_batch_end", BatchEnded(
                    epoch=epoch, step=step, steps=steps, global_step=self.state.global_step,
                    loss=mean, accuracy=correct.item() / seen, lr=current_lrs(optimizer),
                    images_per_second=seen * placement.world_size / busy,
                    eta_seconds=remaining * busy / step))
                loss_sum.zero_()
                window, window_start, last_emit = 0, step + 1, now
                if self.writer is not None:  # the previous epoch's checkpoint reached the disk
                    self._saved(self.writer.harvest())
        busy = time.monotonic() - began - paused
        total = torch.tensor([seen], dtype=torch.long, device=device)
        placement.reduce(epoch_loss, correct, total)
        count = max(1, int(total.item()))
        return (epoch_loss / count).item(), correct.item() / count, count, busy

    def _validate(self, stop: threading.Event, module: nn.Module | None = None
                  ) -> Validation | None:
        """The validation figures of the plain (unwrapped) module, or of ``module``, the EMA's
        counterpart of it, through the same feed."""
        assert self.parts is not None and self.placement is not None
        return validate(self.parts, self.placement, module or self.feed.module, self.feed.val,
                        self.micro.infer, stop)

    def _track_best(self, epoch: int, validated: Validation,
                    averaged: Validation | None = None) -> bool:
        """Count the epoch's monitored value: with EMA, that of the better of the raw and
        the averaged weights (``averaged``), which is then what the epoch's checkpoint offers."""
        assert self.config is not None
        monitor = self.config.train.monitor
        self._weights, validated = better_weights(monitor, validated, averaged)
        value = getattr(validated, monitor)
        if validated.images and not math.isfinite(value):
            self._emit("on_warning", WarningIssued(
                f"the validation {monitor} of epoch {epoch} is {value}; it does not count as "
                f"the best epoch"))
        return self.state.track(epoch, value if validated.images else None,
                                higher=monitor != "val_loss", weights=self._weights)

    # -- checkpoints ----------------------------------------------------------------------

    def _save(self, epoch: int, is_best: bool) -> None:
        """Rank 0 writes last.pt (and best.pt): the plain model's state, so any number of
        processes can resume, evaluate or export it; every rank's RNG state goes with it."""
        parts, placement = self.parts, self.placement
        assert parts is not None and placement is not None
        rngs = placement.gather_object(capture_rng())

        # parameters frozen now and in the next epoch's stage cannot change while the file is
        # written: they need no copy (a head-only run copies the head, not the backbone)
        same_stage = parts.stage_spec(epoch + 1)[0] == parts.stage_index
        unchanging = parts.frozen if same_stage else ()

        def write() -> list[CheckpointSaved]:  # on a thread: the next epoch does not wait
            assert self.writer is not None
            payload = run_checkpoint(parts, self.state, self.stepper.scaler, epoch, rngs,
                                     self.ema, self._weights)
            return self.writer.submit(epoch, payload, is_best, unchanging)

        self._saved(placement.on_main(write))

    def _saved(self, events: list[CheckpointSaved] | None) -> None:
        for event in events or ():
            self._emit("on_checkpoint", event)

    def _kept(self) -> str:
        epoch = self.writer.saved_epoch if self.writer is not None else None
        return f" (the last good checkpoint, of epoch {epoch}, is kept)" if epoch else ""

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        assert self.parts is not None
        restore_run(self.parts, self.state, self.stepper.scaler, checkpoint, self.paths.last,
                    self.ema)

    # -- events ---------------------------------------------------------------------------

    def _emit(self, hook: str, event: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(event)

    def _finish(self, outcome: Outcome, message: str) -> FitEnded:
        """A clean end every rank reaches together: check the replicas, then end."""
        placement, parts = self.placement, self.parts
        if placement is not None:  # every checkpoint is on disk before the run says it ended
            self._saved(placement.on_main(
                lambda: self.writer.finish() if self.writer is not None else []))
        if placement is not None and placement.distributed and parts is not None:
            differ = placement.replicas_differ(shared_state(parts))
            self._ends["replicas"] = "differ" if differ else "identical"
            if differ:
                self._emit("on_warning", WarningIssued(
                    f"the processes ended with different {', '.join(differ[:3])}"
                    f"{' …' if len(differ) > 3 else ''}; the checkpoint holds rank 0's"))
        return self._end(outcome, message)

    def _end(self, outcome: Outcome, message: str) -> FitEnded:
        if self.writer is not None:  # a failed run still keeps the checkpoint in flight
            self.writer.close()
        monitor = self.config.train.monitor if self.config is not None else "val_acc"
        event = FitEnded(outcome=outcome, message=message, epochs_completed=self.state.epoch,
                         best_epoch=self.state.best_epoch, best_metric=self.state.best_metric,
                         monitor=monitor, run_dir=str(self.paths.root),
                         seconds=time.monotonic() - self._started,
                         best_weights=self.state.best_weights if self.config is not None
                         and self.config.train.ema else "")
        self._emit("on_fit_end", event)
        return event


