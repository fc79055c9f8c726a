"""The run history: statuses (a killed run is interrupted, not running), the settings diff, the
reproducibility record, re-running exactly, and what changed since a run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from studio.cli import main
from studio.engine.checkpoint import load_checkpoint
from studio.engine.config import LoraSpec, OptimConfig, ParamGroupSpec, RunConfig, TrainConfig
from studio.engine.data import scan_folder
from studio.engine.errors import StudioError
from studio.engine.events import BatchEnded, Callback, Outcome
from studio.engine.history import (
    RunFolderError,
    config_diff,
    freeze_summary,
    list_runs,
    rename_run,
    summarize_run,
    trash_run,
)
from studio.engine.record import read_record, rerun_differences
from studio.engine.trainer import Trainer

TINY = ["--backbone", "mobilenet_v3_small", "--weights", "none", "--image-size", "32",
        "--device", "cpu", "--precision", "fp32", "--workers", "0", "--batch-size", "8"]


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def history(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs root with a completed, a stopped (early-stopped counts as completed), a failed
    run, and a folder that is not a run."""
    root = tmp_path_factory.mktemp("history")
    assert _train(tiny_dataset, root / "done", "--epochs", "2", "--deterministic") == 0
    with pytest.MonkeyPatch.context() as patch:  # a run that fails in its first epoch
        patch.setattr("studio.engine.trainer.Trainer._train_epoch", _diverge)
        assert _train(tiny_dataset, root / "broken", "--epochs", "1") == 1
    stop = threading.Event()
    stopped = Trainer(RunConfig.load(root / "done" / "config.toml").replace(
        train=TrainConfig(epochs=3, batch_size=8, workers=0, device="cpu", precision="fp32")),
        root / "stopped", callbacks=[_StopAfterABatch(stop)])
    assert stopped.fit(stop).outcome is Outcome.CANCELLED
    (root / "not-a-run").mkdir()
    return root


class _StopAfterABatch(Callback):
    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def on_batch_end(self, event: BatchEnded) -> None:
        self.stop.set()


def _diverge(*args: Any) -> None:
    raise StudioError("the loss became nan in epoch 1")


def test_runs_list_with_their_status_record_and_size(history: Path) -> None:
    runs = {run.name: run for run in list_runs(history)}
    assert set(runs) == {"done", "broken", "stopped"}
    assert runs["stopped"].status == "stopped" and "stopped during epoch 1" in \
        runs["stopped"].message
    done = runs["done"]
    assert (done.status, done.epochs, done.planned, done.best_epoch) == ("completed", 2, 2,
                                                                        done.best_epoch)
    assert done.best_metric is not None and done.freeze == "all layers"
    assert done.size_bytes > (history / "done" / "checkpoints" / "last.pt").stat().st_size
    assert runs["broken"].status == "failed" and "loss" in runs["broken"].message
    record = read_record(history / "done")
    assert record is not None
    assert record["torch"] == torch.__version__ and record["seed"] == 0
    assert record["deterministic"] is True and record["precision"] == "fp32"
    assert record["command"][:2] == ["studio", "train"] and "--deterministic" in record["command"]
    assert record["dataset"]["splits"] == {"train": 24, "val": 6}
    assert record["dataset"]["fingerprint"]["files"] == 30
    assert len(record["dataset"]["fingerprint"]["hash"]) == 64


def test_studio_runs_prints_the_table_and_json_lines(history: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", str(history)]) == 0
    out = capsys.readouterr().out
    assert "done" in out and "completed" in out and "failed" in out and "3 runs" in out
    assert main(["runs", str(history), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["name"] for line in lines} == {"done", "broken", "stopped"}
    keys = {"path", "name", "status", "backbone", "dataset", "epochs", "best_metric",
            "best_epoch", "started", "seconds"}
    assert all(keys <= set(line) for line in lines)


def test_a_run_killed_mid_epoch_is_interrupted_not_running(tiny_dataset: Path,
                                                           tmp_path: Path) -> None:
    run = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "studio", "train", "--data", str(tiny_dataset), "--out",
         str(run), *TINY, "--epochs", "500", "--feature-cache", "off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        metrics = run / "metrics.jsonl"
        while time.monotonic() < deadline and '"event": "epoch"' not in _text(metrics):
            time.sleep(0.1)
        assert summarize_run(run).status == "running"  # type: ignore[union-attr]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    summary = summarize_run(run)
    assert summary is not None and summary.status == "interrupted"
    assert summary.epochs >= 1 and "resume" in summary.message


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def test_the_settings_diff_names_every_changed_field() -> None:
    old = RunConfig()
    new = old.replace(optim=dataclasses.replace(
        old.optim, lr=0.01, groups=(ParamGroupSpec(name="head", patterns=("fc",), lr=0.1),)),
        train=TrainConfig(epochs=3))
    changes = {c.field: (c.old, c.new) for c in config_diff(old, new)}
    assert changes["optim.lr"] == (OptimConfig().lr, 0.01)
    assert changes["train.epochs"] == (10, 3)
    assert changes["optim.groups"] == (0, 1)
    assert changes["optim.groups[0].lr"] == (None, 0.1)
    assert config_diff(old, old) == []
    lora = old.replace(lora=LoraSpec(targets=("layer4",), rank=4))
    changes = {c.field: (c.old, c.new) for c in config_diff(old, lora)}
    assert changes == {"lora.targets": ([], ["layer4"]), "lora.rank": (8, 4)}
    assert freeze_summary(lora) == "all layers, LoRA rank 4"


def test_a_rerun_is_bit_identical_on_the_cpu_and_records_where_it_came_from(
        history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    again = tmp_path / "again"
    assert main(["train", "--rerun", str(history / "done"), "--out", str(again)]) == 0
    assert "the same as in that run" in capsys.readouterr().err
    one = load_checkpoint(history / "done" / "checkpoints" / "last.pt")["model"]
    two = load_checkpoint(again / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(one[name], two[name]) for name in one)
    record = read_record(again)
    assert record is not None and record["rerun_of"] == str(history / "done")


def test_what_changed_since_a_run_is_counted(history: Path, tmp_path: Path,
                                             make_tiny_dataset: Any) -> None:
    run = tmp_path / "run"
    data = make_tiny_dataset(tmp_path / "data", per_class=10)
    assert _train(data, run, "--epochs", "1", "--hash-content") == 0
    assert len(read_record(run)["dataset"]["fingerprint"]["content_hash"]) == 64  # type: ignore

    def differences() -> list[str]:
        return rerun_differences(run, scan_folder(data, 0.2, 0))

    assert differences() == []
    images = sorted(data.rglob("*.png"))
    stat = images[5].stat()
    raw = bytearray(images[5].read_bytes())
    raw[-5] ^= 0xFF  # same size, same modification time, other bytes
    images[5].write_bytes(bytes(raw))
    os.utime(images[5], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert differences() == [
        "the images' contents changed since this run (same names, sizes and times)"]
    images[0].write_bytes(images[1].read_bytes())  # changed
    images[2].unlink()  # removed
    (data / "red" / "extra.png").write_bytes(images[3].read_bytes())  # added
    assert differences() == ["1 file changed, 1 file added, 1 file removed since this run"]
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    record["torch"] = "2.13.0"
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    assert differences()[-1] == f"torch 2.13.0 → {torch.__version__}"


def test_rename_and_trash_refuse_what_they_should(history: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    root = tmp_path / "root"
    shutil.copytree(history / "done", root / "first")
    renamed = rename_run(root / "first", "kept")
    assert renamed == root / "kept" and summarize_run(renamed) is not None
    with pytest.raises(RunFolderError, match="cannot name a run folder"):
        rename_run(renamed, "../escape")
    monkeypatch.setitem(sys.modules, "send2trash", None)  # no system trash: the runs root's
    trashed = trash_run(renamed)
    assert trashed is not None and trashed.parent == root / ".trash" and trashed.is_dir()
    assert list_runs(root) == []
    with pytest.raises(RunFolderError, match="not a run folder"):
        trash_run(root / "missing")



def test_a_hard_linked_checkpoint_counts_once_in_the_folder_size(tmp_path: Path) -> None:
    from studio.engine.history import folder_size

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "last.pt").write_bytes(b"x" * 1000)
    (tmp_path / "metrics.jsonl").write_bytes(b"y" * 10)
    try:
        os.link(checkpoints / "last.pt", checkpoints / "best.pt")  # what the trainer does
    except OSError:
        pytest.skip("no hard links on this file system")
    assert folder_size(tmp_path) == 1010
