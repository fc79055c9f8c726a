"""OS errors a user can cause end in one sentence naming the path and what to do, and lose
nothing: a full disk while saving, an output folder that cannot be made, an image that vanished
or cannot be read. Tracebacks go to the log file, which the sentence names."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import studio.engine.images as images_module
from studio.cli import main
from studio.engine.checkpoint import load_checkpoint
from studio.engine.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from studio.engine.data import Sample, scan_folder
from studio.engine.errors import DatasetError, StudioError
from studio.engine.events import Callback, EpochEnded, Outcome
from studio.engine.logs import log_path, setup_logging
from studio.engine.trainer import Trainer

TRAIN = ["--backbone", "mobilenet_v3_small", "--weights", "none", "--image-size", "32",
         "--device", "cpu", "--precision", "fp32", "--workers", "0", "--schedule", "none"]


def tiny_config(data: Path, **train: Any) -> RunConfig:
    settings: dict[str, Any] = {"epochs": 2, "batch_size": 8, "workers": 0, "precision": "fp32",
                                "device": "cpu", "image_cache": "off", "feature_cache": "off"}
    settings.update(train)
    return RunConfig(data=DataConfig(root=str(data), image_size=32, augment="light"),
                     model=ModelConfig(backbone="mobilenet_v3_small", weights="none"),
                     optim=OptimConfig(schedule="none"), train=TrainConfig(**settings))


def test_a_full_disk_while_saving_keeps_the_last_good_checkpoint(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    real_save, writers = torch.save, []

    def save(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        writers.append(threading.current_thread().name)
        if len(writers) == 2:  # epoch 2: half a file, then the disk is full
            handle.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    code = main(["train", "--data", str(tiny_dataset), "--out", str(run), "--epochs", "3", *TRAIN])

    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    said = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(said) == 1
    assert "saving the checkpoint of epoch 2" in said[0] and "the disk is full" in said[0]
    assert f"--resume {run}" in said[0] and "of epoch 1, is kept" in said[0]
    assert all(name.startswith("checkpoint") for name in writers)  # off the training thread
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 1
    assert not list((run / "checkpoints").glob("*.tmp"))  # the half-written file is gone

    monkeypatch.setattr(torch, "save", real_save)  # space freed: the run continues
    assert main(["train", "--resume", str(run)]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3


def test_an_output_folder_that_cannot_be_made_is_one_sentence(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    code = main(["train", "--data", str(tiny_dataset), "--out", str(blocker / "run"), *TRAIN])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"the run folder {blocker / 'run'} cannot be written: a part of the path is a " \
           f"file, not a folder; choose another --out folder" in err

    locked = tmp_path / "locked"
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == locked / "run":  # as a folder the user may not write to (root ignores modes)
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code = main(["train", "--data", str(tiny_dataset), "--out", str(locked / "run"), *TRAIN])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "cannot be written: permission was denied; choose another --out folder" in err


class _DeleteAfterFirstEpoch(Callback):
    def __init__(self, victim: Path) -> None:
        self.victim = victim

    def on_epoch_end(self, event: EpochEnded) -> None:
        if event.epoch == 1:
            self.victim.unlink()


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_vanishes_during_a_run_is_named(tmp_path: Path, make_tiny_dataset: Any,
                                                      workers: int) -> None:
    data = make_tiny_dataset(tmp_path / "data", per_class=5)
    victim = Path(scan_folder(data, val_fraction=0.2, seed=0).splits["train"][0].path)
    trainer = Trainer(tiny_config(data, workers=workers), tmp_path / "run",
                      callbacks=[_DeleteAfterFirstEpoch(victim)])

    result = trainer.fit()

    assert result.outcome is Outcome.FAILED
    # a DataLoader worker's error arrives wrapped in its traceback; the user reads the sentence
    assert result.message == (f"{victim} could not be read: it was moved or deleted after the "
                              f"dataset was scanned; put it back or scan the folder again")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 1


def test_an_image_that_cannot_be_read_says_what_to_do(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "cat.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(image)

    def denied(path: Any) -> Any:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(images_module, "load_image", denied)
    dataset = images_module.FolderDataset([Sample(str(image), 0)], lambda x: x)
    with pytest.raises(DatasetError) as caught:
        dataset[0]
    assert str(caught.value) == (f"{image} could not be read: permission was denied; give your "
                                 f"user read permission (chmod a+r) or move the file out of the "
                                 f"dataset, then scan again")


def test_a_dataloader_workers_wrapped_error_reads_as_its_sentence() -> None:
    wrapped = DatasetError("Caught DatasetError in DataLoader worker process 0.\n"
                           "Original Traceback (most recent call last):\n"
                           '  File "x.py", line 1, in <module>\n'
                           "studio.engine.errors.DatasetError: a.png could not be read: gone\n")
    assert str(wrapped) == "a.png could not be read: gone"
    assert str(StudioError("plain sentence")) == "plain sentence"


def test_an_unexpected_error_says_where_its_traceback_is(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STUDIO_LOG_FILE", str(tmp_path / "logs" / "studio.log"))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug deep inside")

    monkeypatch.setattr("studio.engine.trainer.build_parts", broken)
    code = main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), *TRAIN])
    err = capsys.readouterr().err
    log = tmp_path / "logs" / "studio.log"
    assert code == 1 and "Traceback" not in err
    assert f"training failed unexpectedly (RuntimeError: a bug deep inside); the details are " \
           f"in {log}" in err
    text = log.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in text and "a bug deep inside" in text
    monkeypatch.undo()
    setup_logging()  # back to the suite's log file
    assert log_path() != log


def test_an_export_to_a_folder_that_cannot_be_made_is_one_sentence(
        trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    code = main(["export", str(trained_run), "--format", "safetensors",
                 "--out", str(blocker / "export")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "failed: a part of the path is a file, not a folder; choose another --out folder " \
           "that you may write to" in err
    assert str(blocker) in err


def test_the_checkpoint_writer_saves_a_snapshot_and_links_the_best(tmp_path: Path) -> None:
    from studio.engine.checkpoint import CheckpointWriter
    from studio.engine.runs import RunPaths

    paths = RunPaths(tmp_path / "run")
    writer = CheckpointWriter(paths)
    weight = torch.zeros(3)
    assert writer.submit(1, {"epoch": 1, "model": {"w": weight}}, best=True) == []
    weight += 5  # the next optimizer step changes the live tensor while the file is written
    assert [(e.epoch, e.kind) for e in writer.finish()] == [(1, "last"), (1, "best")]
    assert torch.equal(load_checkpoint(paths.last)["model"]["w"], torch.zeros(3))
    assert os.stat(paths.best).st_ino == os.stat(paths.last).st_ino  # no second write

    writer.submit(2, {"epoch": 2, "model": {"w": weight}}, best=False)
    writer.close()
    assert load_checkpoint(paths.last)["epoch"] == 2 and writer.saved_epoch == 2
    assert load_checkpoint(paths.best)["epoch"] == 1  # the link kept the best epoch's file


def test_a_full_disk_while_recording_metrics_ends_the_run_with_a_sentence(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from studio.engine.runs import MetricsWriter

    real_write = MetricsWriter._write

    def write(self: MetricsWriter, record: dict[str, Any]) -> None:
        if record["event"] in ("fit_end", "epoch") and record.get("epoch", 2) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.paths.metrics))
        real_write(self, record)

    monkeypatch.setattr(MetricsWriter, "_write", write)
    run = tmp_path / "run"
    result = Trainer(tiny_config(tiny_dataset), run).fit()

    assert result.outcome is Outcome.FAILED
    assert result.message == (
        f"training failed at {run / 'metrics.jsonl'}: the disk is full; free some space on that "
        f"disk, then continue with `studio train --resume {run}` (the last good checkpoint, "
        f"of epoch 1, is kept)")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
