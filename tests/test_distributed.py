"""Several processes for one run, on CPU with gloo: what a user of `studio train
--nproc-per-node N` (or of two machines meeting through a rendezvous) would notice.

Each test starts real torchrun launches of tiny runs (resnet18 at 16 px on 48 images), so they
are few and share work: about 15 s a launch on 2 cores, most of it importing torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from studio.cli import main
from studio.engine.checkpoint import load_checkpoint
from studio.engine.config import RunConfig
from studio.engine.events import event_from_line
from studio.engine.runs import read_metrics

WAIT = 180  # seconds: a bound on each launch, never a sleep
ROOT = Path(__file__).resolve().parents[1]  # the processes import this checkout's studio

MODEL = ["--backbone", "resnet18", "--weights", "none", "--image-size", "16", "--augment",
         "none", "--precision", "fp32", "--workers", "0", "--val-fraction", "0.25"]
TINY = [*MODEL, "--device", "cpu"]
BN = ("*bn*", "*downsample.1*")  # resnet18's BatchNorm layers


def staged_config(tmp_path: Path) -> Path:
    """BatchNorm frozen throughout; the stem and layer1 frozen in epoch 1 and layer1 unfrozen
    from epoch 2, so the model must be wrapped anew for DDP to reduce layer1's gradients."""
    from studio.engine.config import FreezeSpec, OptimConfig, StageSpec

    config = RunConfig(freeze=FreezeSpec(freeze=(*BN, "conv1", "layer1")),
                       stages=(StageSpec(epoch=2, freeze=FreezeSpec(freeze=(*BN, "conv1"))),),
                       optim=OptimConfig(schedule="none"))
    path = tmp_path / "staged.toml"
    config.save(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, make_tiny_dataset: Any) -> Path:
    """3 classes × 16 images: 36 train (3 whole batches of 12), 12 val."""
    return make_tiny_dataset(tmp_path_factory.mktemp("ddp") / "data", per_class=16, size=16)


class Launch:
    """`python -m studio ARGS` in its own session, its stderr read line by line."""

    def __init__(self, args: list[str], cwd: Path, torchrun: list[str] | None = None) -> None:
        env = dict(os.environ, STUDIO_TEST_TAG=uuid.uuid4().hex, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                            os.environ.get("PYTHONPATH")])))
        self.tag = env["STUDIO_TEST_TAG"]
        LAUNCHED.append(self)
        launcher = ["-m", "torch.distributed.run", *torchrun, "-m"] if torchrun else ["-m"]
        self.process = subprocess.Popen(
            [sys.executable, *launcher, "studio", "train", *args], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        threading.Thread(target=self._pump, args=(self.process.stderr, self.stderr, True),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.process.stdout, self.stdout, False),
                         daemon=True).start()

    def _pump(self, stream: Any, into: list[str], announce: bool) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))
            if announce:
                self.lines.put(line)

    def wait_for_line(self, text: str) -> str:
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"no line with {text!r} within {WAIT} s: {self.stderr[-10:]}")
            if text in line:
                return line

    def finish(self, others: list[Launch] = ()) -> int:  # type: ignore[assignment]
        try:
            return self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            for launch in {self, *others}:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(launch.process.pid, signal.SIGKILL)
            told = "\n".join(f"{launch.process.args[2:9]}: {launch.stderr[-10:]}"
                             for launch in {self, *others})
            pytest.fail(f"the launch did not end within {WAIT} s:\n{told}")

    def ranks(self) -> dict[int, int]:
        """rank → pid of this launch's training processes (found by their environment)."""
        return {rank: pid for pid, rank in self.processes().items() if rank is not None}

    def processes(self) -> dict[int, int | None]:
        """pid → rank (None for the launcher) of every live process this launch started."""
        found: dict[int, int | None] = {}
        if not Path("/proc").is_dir():  # not Linux: the processes cannot be listed this way
            return found
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"STUDIO_TEST_TAG={self.tag}".encode() in env:
                ranks = [int(item[5:]) for item in env if item.startswith(b"RANK=")]
                found[int(entry.name)] = ranks[0] if ranks else None
        return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def epochs_of(run: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(run) if r.get("event") == "epoch"]


LAUNCHED: list[Launch] = []


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    """Every process a test started (launcher and ranks) has ended with it."""
    yield
    left = {pid: rank for launch in LAUNCHED for pid, rank in launch.processes().items()
            if not _zombie(pid)}
    LAUNCHED.clear()
    assert not left, f"processes outlived their test (pid: rank): {left}"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# -- the same run, two ways ---------------------------------------------------------------------


def test_two_machines_with_batch_b_match_one_process_with_batch_2b(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two "machines" on localhost meet through the c10d rendezvous, one process each, batch
    6: the first through `studio train --nnodes 2`, the second through torchrun by hand. One
    process alone, batch 12. BatchNorm is frozen, so the runs see the same global batches and
    must end at the same weights (fp32 tolerance), through a stage that unfreezes layer1;
    validation counts each of the 12 val images once."""
    alone, together = tmp_path / "alone", tmp_path / "together"
    staged = ["--config", str(staged_config(tmp_path)), "--data", str(data), *TINY,
              "--epochs", "2"]
    assert main(["train", *staged, "--batch-size", "12", "--out", str(alone)]) == 0
    endpoint = f"127.0.0.1:{free_port()}"
    run = [*staged, "--batch-size", "6", "--out", str(together)]
    nodes = [Launch([*run, "--nnodes", "2", "--node-rank", "0", "--nproc-per-node", "1",
                     "--rdzv-endpoint", endpoint], tmp_path),
             Launch(run, tmp_path, torchrun=[
                 "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", endpoint, "--rdzv-id", "finetune-studio",
                 "--rdzv-conf", "is_host=0"])]
    codes = [node.finish(others=nodes) for node in nodes]
    assert codes == [0, 0], "\n\n".join("\n".join(node.stderr[-40:]) for node in nodes)

    one = load_checkpoint(alone / "checkpoints" / "last.pt")
    two = load_checkpoint(together / "checkpoints" / "last.pt")
    assert not any(key.startswith("module.") for key in two["model"])  # the plain model
    assert two["processes"] == 2 and len(two["rng_ranks"]) == 2
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=5e-5,
                                   msg=lambda m, key=key: f"{key}: {m}")
    frozen = [k for k in one["model"] if ".bn" in k or k.startswith(("bn1", "conv1"))]
    assert frozen and all(torch.equal(one["model"][k], two["model"][k]) for k in frozen)
    stages = [r for r in read_metrics(together) if r["event"] == "stage"]
    assert [s["epoch"] for s in stages] == [1, 2]
    assert stages[1]["trainable_params"] > stages[0]["trainable_params"]
    for a, b in zip(epochs_of(alone), epochs_of(together), strict=True):
        assert b["val_images"] == a["val_images"] == 12
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4, abs=1e-6)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    ends = [r for r in read_metrics(together) if r["event"] == "fit_end"]
    assert ends[-1]["replicas"] == "identical"
    assert RunConfig.load(together / "config.toml").train.processes == 1  # per machine

    # The DDP run continues alone, and evaluates like any run.
    capsys.readouterr()
    assert main(["train", "--resume", str(together), "--epochs", "3",
                 "--nproc-per-node", "1"]) == 0
    assert [r["epoch"] for r in epochs_of(together)] == [1, 2, 3]
    assert main(["eval", str(together), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 12


# -- stopping -----------------------------------------------------------------------------------


def test_ctrl_c_stops_every_rank_at_the_same_batch_and_the_run_resumes_under_ddp(
        data: Path, tmp_path: Path) -> None:
    """Head only, so the feature cache is on in both processes; Ctrl-C reaches the launcher
    and both processes; all stop after their batch, and the run resumes with 2 processes.
    Rank 0 also streams its events as JSON lines on stdout (what the app reads), the live
    learning view's among them (its sampling leaves the replicas identical)."""
    run = tmp_path / "run"
    args = ["--data", str(data), *TINY, "--freeze-preset", "head_only", "--batch-size", "6",
            "--out", str(run), "--nproc-per-node", "2", "--json-events"]
    launch = Launch([*args, "--epochs", "400"], tmp_path)
    launch.wait_for_line("epoch 1/400: train loss")
    os.killpg(launch.process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert launch.finish() == 130, launch.stderr[-8:]
    assert any("stopping after this batch" in line for line in launch.stderr)
    done = load_checkpoint(run / "checkpoints" / "last.pt")["epoch"]
    records = read_metrics(run)
    assert records[-1]["event"] == "fit_end" and records[-1]["outcome"] == "cancelled"
    assert records[-1]["replicas"] == "identical"  # both stopped at the same batch
    caches = [r for r in records if r["event"] == "cache" and r["kind"] == "features"]
    assert caches[0]["state"] in ("ready", "reused") and "every process" in caches[0]["detail"]
    events = [event_from_line(line) for line in launch.stdout]
    hooks = [hook for hook, _ in filter(None, events)]
    assert hooks[0] == "on_fit_start" and hooks[-1] == "on_fit_end"
    assert "on_epoch_end" in hooks and "on_batch_end" in hooks
    stats = [event for hook, event in filter(None, events) if hook == "on_layer_stats"]
    assert stats, "rank 0 samples the live learning view for the app"
    assert all(name.startswith("fc.") for name in stats[0].grad_norm)  # the head trains

    resumed = Launch(["--resume", str(run), "--epochs", str(done + 2)], tmp_path)
    assert resumed.finish() == 0, resumed.stderr[-8:]
    assert [r["epoch"] for r in epochs_of(run)][-2:] == [done + 1, done + 2]
    starts = [r for r in read_metrics(run) if r["event"] == "fit_start"]
    assert starts[-1]["processes"] == 2 and starts[-1]["start_epoch"] == done + 1


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks through /proc")
def test_a_rank_that_dies_ends_the_others_with_one_sentence_naming_it(
        data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    launch = Launch(["--data", str(data), *TINY, "--batch-size", "6", "--epochs", "400",
                     "--freeze-preset", "head_only", "--out", str(run), "--nproc-per-node", "2"],
                    tmp_path)
    launch.wait_for_line("epoch 2/400: train loss")  # epoch 1's checkpoint is saved by now
    ranks = launch.ranks()
    assert sorted(ranks) == [0, 1]
    os.kill(ranks[1], signal.SIGKILL)
    assert launch.finish() == 1
    errors = [line for line in launch.stderr if line.startswith("error: rank 1 ")]
    assert errors and "killed by SIGKILL" in errors[-1] and "--resume" in errors[-1]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] >= 1  # resumable


# -- refused before anything starts -------------------------------------------------------------


@pytest.mark.parametrize("extra,words", [
    (["--backend", "nccl"], "nccl backend needs CUDA"),
    (["--sync-bn"], "--sync-bn needs CUDA"),
    (["--nnodes", "2"], "needs --rdzv-endpoint"),
    (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"], "--node-rank must be"),
    (["--nnodes", "2", "--rdzv-endpoint", "nohost"], "HOST:PORT"),
])
def test_impossible_combinations_are_refused_with_a_sentence(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
        words: str) -> None:
    code = main(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "r"),
                 "--nproc-per-node", "2", *extra])
    err = capsys.readouterr().err
    assert code == 1 and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_more_processes_than_gpus_is_refused(data: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code = main(["train", "--data", str(data), *MODEL, "--device", "cuda",
                 "--nproc-per-node", "2", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "2 processes" in err and "1 CUDA GPU" in err, err


def test_an_error_is_told_once(capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0's error reaches the other ranks as MainRankError (which they do not print
    again); the launcher adds a sentence only for a process that died without one."""
    from types import SimpleNamespace

    from studio.cli.launch import report_failure
    from studio.engine.errors import StudioError
    from studio.engine.runtime import MainRankError, Placement

    monkeypatch.setattr(Placement, "broadcast_object",
                        lambda self, value: (None, "the run folder cannot be written"))
    with pytest.raises(MainRankError, match="cannot be written"):
        Placement(torch.device("cpu"), rank=1, world_size=2).on_main(lambda: 1)
    with pytest.raises(StudioError) as on_main:
        Placement(torch.device("cpu"), rank=0, world_size=2).on_main(lambda: 1)
    assert not isinstance(on_main.value, MainRankError)

    def failure(exitcode: int, when: float, pid: int = 7) -> SimpleNamespace:
        return SimpleNamespace(exitcode=exitcode, timestamp=when, pid=pid,
                               signal_name=lambda: "SIGKILL")

    assert report_failure({0: failure(1, 2.0), 1: failure(1, 1.0)}) == 1
    assert capsys.readouterr().err == ""  # each said its own sentence already
    assert report_failure({0: failure(130, 1.0), 1: failure(130, 2.0)}) == 130
    assert report_failure({0: failure(1, 2.0), 1: failure(-9, 1.0, pid=42)}) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: rank 1 (process 42 ")
    assert "killed by SIGKILL" in err
