"""`studio train` as a user meets it: the run folder, flags that reach the config, --config with
overrides, --resume, one-sentence errors, plain lines off a terminal, and Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from studio.cli import main
from studio.cli.train import TerminalProgress
from studio.engine.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from studio.engine.events import BatchEnded, EpochEnded, FitEnded, FitStarted, Outcome

BACKBONE = "mobilenet_v3_small"
TINY = ["--backbone", BACKBONE, "--weights", "none", "--image-size", "32", "--workers", "0",
        "--precision", "fp32", "--device", "cpu", "--batch-size", "8"]
WAIT = 120  # seconds: a bound on waits for conditions, never a sleep


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """A tiny model gains nothing from two intra-op threads, and on a busy two-core machine
    OpenMP's spinning made a fit many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """3 classes × 10 noisy solid-colour 16-pixel images."""
    rng = random.Random(0)
    root = tmp_path / "data"
    for name, colour in {"red": (220, 30, 30), "green": (30, 200, 40),
                         "blue": (40, 60, 220)}.items():
        (root / name).mkdir(parents=True)
        for i in range(10):
            image = Image.new("RGB", (16, 16), colour)
            for _ in range(32):
                image.putpixel((rng.randrange(16), rng.randrange(16)),
                               tuple(min(255, max(0, c + rng.randint(-60, 60))) for c in colour))
            image.save(root / name / f"{i}.png")
    return root


def train(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["train", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def epochs_in(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r["epoch"] for r in map(json.loads, lines) if r["event"] == "epoch"]


def fit_start(run: Path) -> dict[str, Any]:
    first = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[0]
    return json.loads(first)


def test_train_writes_a_run_folder_and_reports_in_plain_lines(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code, out, err = train(capsys, "--data", str(data), *TINY, "--epochs", "1", "--out", str(run))

    assert code == 0, err
    for name in ("config.toml", "labels.json", "metrics.jsonl", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert epochs_in(run) == [1]
    assert "\r" not in err and "\033" not in err  # not a terminal: plain lines
    lines = err.splitlines()
    assert lines[0].startswith(f"starting epoch 1/1 in {run}")
    assert any(line.startswith("epoch 1/1: train loss") for line in lines)
    assert lines[-1].startswith("completed 1 epoch")
    assert out == ""


def test_without_out_the_run_goes_under_the_runs_root_the_app_uses(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from studio.engine.history import list_runs
    from studio.engine.runs import default_runs_root

    monkeypatch.setenv("STUDIO_RUNS_DIR", str(tmp_path / "all-runs"))
    assert default_runs_root() == tmp_path / "all-runs"
    code, _, err = train(capsys, "--data", str(data), *TINY, "--epochs", "1")
    assert code == 0, err
    [run] = (tmp_path / "all-runs").iterdir()
    assert run.name.startswith(f"{BACKBONE}-") and (run / "checkpoints" / "last.pt").is_file()
    [summary] = list_runs()
    assert (summary.path, summary.status, summary.epochs) == (run, "completed", 1)


def test_the_default_runs_root_is_in_the_user_data_folder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    from studio.engine.runs import default_runs_root

    monkeypatch.delenv("STUDIO_RUNS_DIR", raising=False)
    assert default_runs_root() == platformdirs.user_data_path(
        "finetune-studio", appauthor=False) / "runs"


@pytest.mark.parametrize("flags,check", [
    pytest.param(["--freeze-preset", "head_only", "--unfreeze", "features.12",
                  "--lr", "features.12=0.0005", "--lr", "classifier.3=0.01"],
                 lambda c: (c.freeze.preset == "head_only"
                            and c.freeze.unfreeze == ("features.12",)
                            and [(g.name, g.patterns, g.lr) for g in c.optim.groups]
                            == [("features.12", ("features.12",), 0.0005),
                                ("classifier.3", ("classifier.3",), 0.01)]),
                 id="head-only-unfreeze-lr"),
    pytest.param(["--freeze", "features.0", "--freeze", "features.1*", "--base-lr", "0.002"],
                 lambda c: (c.freeze.preset == "train_all"
                            and c.freeze.freeze == ("features.0", "features.1*")
                            and c.optim.lr == 0.002),
                 id="freeze-globs-base-lr"),
    pytest.param(["--freeze-up-to", "features.6"],
                 lambda c: c.freeze.preset == "up_to" and c.freeze.up_to == "features.6",
                 id="freeze-up-to"),
    pytest.param(["--freeze-preset", "head_only", "--lora", "features.11", "features.12",
                  "--lora-rank", "4", "--lora-alpha", "8", "--lora-dropout", "0.1"],
                 lambda c: (c.freeze.preset == "head_only"
                            and (c.lora.targets, c.lora.rank, c.lora.alpha, c.lora.dropout)
                            == (("features.11", "features.12"), 4, 8.0, 0.1)),
                 id="lora-flags"),
])
def test_freeze_and_lr_flags_reach_the_saved_config(data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    flags: list[str], check: Any) -> None:
    run = tmp_path / "run"
    code, _, err = train(capsys, "--data", str(data), *TINY, "--epochs", "1", "--out", str(run),
                         *flags)
    assert code == 0, err
    assert check(RunConfig.load(run / "config.toml"))
    started = fit_start(run)
    assert 0 < started["trainable_params"] < started["total_params"]


def test_flags_override_the_fields_of_a_config_file(data: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = RunConfig(
        data=DataConfig(root=str(data), image_size=32, augment="none"),
        model=ModelConfig(backbone=BACKBONE, weights="none"),
        optim=OptimConfig(optimizer="sgd", lr=0.005, schedule="step"),
        train=TrainConfig(epochs=3, batch_size=12, workers=0, precision="fp32", device="cpu"))
    config.save(tmp_path / "run.toml")
    run = tmp_path / "run"

    code, _, err = train(capsys, "--config", str(tmp_path / "run.toml"), "--epochs", "1",
                         "--base-lr", "0.02", "--out", str(run))

    assert code == 0, err
    saved = RunConfig.load(run / "config.toml")
    assert (saved.train.epochs, saved.optim.lr) == (1, 0.02)  # the flags win
    assert (saved.train.batch_size, saved.optim.optimizer, saved.optim.schedule,
            saved.data.augment) == (12, "sgd", "step", "none")  # the file's fields stay
    assert epochs_in(run) == [1]


def test_resume_appends_the_next_epoch(data: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert train(capsys, "--data", str(data), *TINY, "--epochs", "1", "--out", str(run))[0] == 0

    code, _, err = train(capsys, "--resume", str(run), "--epochs", "2")

    assert code == 0, err
    assert err.splitlines()[0].startswith(f"resuming at epoch 2/2 in {run}")
    assert epochs_in(run) == [1, 2]
    assert RunConfig.load(run / "config.toml").data.root == str(data.resolve())


@pytest.mark.parametrize("args,message", [
    pytest.param(["--lr", "layer4"], "--lr expects GLOB=LR", id="lr-without-equals"),
    pytest.param(["--lr", "layer4=abc"], "--lr expects GLOB=LR", id="lr-not-a-number"),
    pytest.param(["--lr", "layer4=20"], "--lr layer4=20: lr must be at most 10",
                 id="lr-too-large"),
    pytest.param(["--base-lr", "-1"], "--base-lr", id="negative-base-lr"),
    pytest.param(["--epochs", "0"], "--epochs: epochs must be between 1 and", id="zero-epochs"),
    pytest.param(["--val-fraction", "2"], "--val-fraction", id="val-fraction-too-large"),
    pytest.param(["--backbone", "nosuchnet"], "unknown backbone 'nosuchnet'",
                 id="unknown-backbone"),
    pytest.param(["--freeze", "layer4"], "freeze pattern 'layer4' matches no parameter",
                 id="freeze-matches-nothing"),
    pytest.param(["--lora", "classifier.3"], "LoRA target 'classifier.3' holds no Linear",
                 id="lora-on-the-head"),
    pytest.param(["--lora-preset", "attention"],
                 "--lora-preset attention: mobilenet_v3_small has no layer for "
                 "'LoRA on attention'", id="lora-preset-without-attention"),
    pytest.param(["--lora", "features", "--lora-rank", "0"],
                 "--lora-rank: rank must be between 1 and 1024", id="lora-rank-zero"),
    pytest.param(["--data", "{tmp}/missing"], "does not exist", id="missing-data-folder"),
    pytest.param(["--config", "{tmp}/missing.toml"], "config file", id="missing-config-file"),
    pytest.param(["--resume", "{tmp}"], "is not a run folder", id="resume-not-a-run"),
])
def test_bad_input_exits_non_zero_with_one_sentence(data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    args: list[str], message: str) -> None:
    run = tmp_path / "run"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = train(capsys, "--data", str(data), *TINY, "--epochs", "1",
                           "--out", str(run), *args)

    assert code == 1
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not run.exists()  # nothing half-made to clean up before trying again


def test_missing_data_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = train(capsys, *TINY, "--out", str(tmp_path / "run"))
    assert code == 1
    assert err.startswith("error: no dataset given") and err.count("\n") == 1


def test_an_out_folder_that_holds_a_run_is_refused(data: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert train(capsys, "--data", str(data), *TINY, "--epochs", "1", "--out", str(run))[0] == 0
    code, _, err = train(capsys, "--data", str(data), *TINY, "--epochs", "1", "--out", str(run))
    assert code == 1 and "already holds a run" in err and f"--resume {run}" in err
    assert epochs_in(run) == [1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream", [Terminal(), io.StringIO()], ids=["terminal", "pipe"])
def test_progress_is_a_live_bar_on_a_terminal_and_plain_lines_otherwise(
        stream: io.StringIO) -> None:
    progress = TerminalProgress(stream)
    progress.on_fit_start(FitStarted("run", 2, 1, 4, 24, 6, ("a", "b"), "cpu", "fp32", True,
                                     10, 20))
    progress.on_batch_end(BatchEnded(1, 2, 4, 2, 0.5, 0.75, {"default": 0.1}, 100.0, 65.0))
    progress.on_epoch_end(EpochEnded(1, 0.5, 0.75, 0.6, 0.5, {"default": 0.1}, 1.5, 100.0, True))
    progress.on_fit_end(FitEnded(Outcome.COMPLETED, "completed 2 epochs", 2, 1, 0.5, "val_acc",
                                 "run", 3.0))
    text = stream.getvalue()
    assert "epoch 1/2: train loss 0.5000 acc 75.0% | val loss 0.6000 acc 50.0%" in text
    assert "completed 2 epochs; best val_acc 0.5000 at epoch 1" in text
    if isinstance(stream, Terminal):
        assert "\r" in text and "2/4 loss 0.5000 acc 75.0%" in text and "ETA 1:05" in text
    else:
        assert "\r" not in text and "ETA" not in text
        assert len(text.splitlines()) == 3


def test_ctrl_c_stops_after_the_batch_and_leaves_a_resumable_run(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "studio", "train", "--data", str(data), *TINY,
               "--epochs", "1000", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w", encoding="utf-8") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
                                cwd=tmp_path)
        try:
            for _ in range(WAIT * 10):  # until the first epoch is on file (bounded)
                try:
                    proc.wait(timeout=0.1)
                    break  # it ended by itself: the assertions below say why
                except subprocess.TimeoutExpired:
                    metrics = run / "metrics.jsonl"
                    if metrics.exists() and '"event": "epoch"' in metrics.read_text("utf-8"):
                        break
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = log.read_text(encoding="utf-8")

    assert code == 130, err
    assert "stopping after this batch" in err and "Traceback" not in err
    done = epochs_in(run)
    assert done == list(range(1, len(done) + 1)) and done
    assert f"the run resumes from epoch {len(done) + 1} with --resume {run}" in err

    code, _, err = train(capsys, "--resume", str(run), "--epochs", str(len(done) + 1))

    assert code == 0, err
    assert f"resuming at epoch {len(done) + 1}/{len(done) + 1}" in err
    assert epochs_in(run) == list(range(1, len(done) + 2))
