"""Model EMA: the average follows its decay (and warm-up) exactly, every epoch line carries the
averaged weights' figures, the better of the two sets is what best.pt offers evaluate, a resumed
run ends with the same average as an unbroken one, and the flags and sentences reach a user.

Fits run ``mobilenet_v3_small`` at 32 px on 3 classes × 10 images of 16 pixels, as in
test_trainer.py, where the figures need only match bit for bit; resnet18 where they must tell
the average from the raw weights (a random-init mobilenet's logits are all but zero there).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from studio.cli import main
from studio.engine.checkpoint import evaluated_state, load_checkpoint, save_checkpoint
from studio.engine.config import (
    ConfigError,
    DataConfig,
    FreezeSpec,
    ModelConfig,
    OptimConfig,
    RunConfig,
    StageSpec,
    TrainConfig,
)
from studio.engine.ema import ModelEma, better_weights
from studio.engine.evaluate import evaluate_run
from studio.engine.events import Callback, EpochEnded, Outcome
from studio.engine.history import summarize_run
from studio.engine.metrics import Validation
from studio.engine.runs import open_run, read_metrics
from studio.engine.trainer import Trainer

EMA_FIGURES = ("ema_val_loss", "ema_val_acc", "ema_macro_f1", "ema_balanced_acc")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread (a tiny model gains nothing from two busy cores), and torch's
    determinism put back after a deterministic fit."""
    threads = torch.get_num_threads()
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def tiny_config(data: Path, *, epochs: int = 2, augment: str = "light",
                freeze: FreezeSpec | None = None, backbone: str = "mobilenet_v3_small",
                stages: tuple[StageSpec, ...] = (), **train: Any) -> RunConfig:
    settings: dict[str, Any] = {"epochs": epochs, "batch_size": 8, "workers": 0,
                                "precision": "fp32", "device": "cpu", "deterministic": True,
                                "tensorboard": False, "ema": 0.9, "ema_warmup": False}
    settings.update(train)
    return RunConfig(data=DataConfig(root=str(data), image_size=32, augment=augment),
                     model=ModelConfig(backbone=backbone, weights="none"),
                     freeze=freeze or FreezeSpec(), stages=stages, optim=OptimConfig(lr=3e-3),
                     train=TrainConfig(**settings))


def epoch_lines(run: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(run) if r["event"] == "epoch"]


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3), nn.Linear(3, 2))


def train_once(model: nn.Module) -> None:
    """One SGD step in train mode: the weights and the BatchNorm statistics both move."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(torch.randn(8, 4)).square().mean().backward()
    optimizer.step()


# -- the average itself ---------------------------------------------------------------------


def test_one_update_moves_every_tensor_by_the_decay_and_counts_follow_the_model() -> None:
    model = small_model()
    ema = ModelEma(model, decay=0.9, warmup=False)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())  # starts equal

    train_once(model)
    ema.update(model)

    now = model.state_dict()
    for key, averaged in ema.module.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert torch.equal(averaged, now[key])  # a count follows the model
            continue
        torch.testing.assert_close(averaged, 0.9 * start[key] + 0.1 * now[key],
                                   rtol=1e-6, atol=1e-7)
        assert not torch.equal(averaged, now[key]), key  # EMA weights differ from raw
    assert ema.updates == 1 and int(ema.averaged.n_averaged) == 2


def test_warm_up_starts_low_and_rises_to_the_decay() -> None:
    ema = ModelEma(small_model(), decay=0.99, warmup=True)
    assert [ema.decay_at(t) for t in (0, 8, 80)] == [pytest.approx(0.1), pytest.approx(0.5),
                                                     pytest.approx(0.9)]
    assert ema.decay_at(10_000) == 0.99  # capped by the decay
    assert ModelEma(small_model(), decay=0.99, warmup=False).decay_at(0) == 0.99

    model = small_model()
    ema = ModelEma(model, decay=0.99, warmup=True)
    expected = {k: v.clone() for k, v in ema.module.named_parameters()}
    for t in range(3):
        train_once(model)
        ema.update(model)
        d = (1 + t) / (10 + t)
        expected = {k: d * expected[k] + (1 - d) * p.detach()
                    for k, p in model.named_parameters()}
    for key, averaged in ema.module.named_parameters():
        torch.testing.assert_close(averaged, expected[key], rtol=1e-6, atol=1e-7)


def test_tensors_that_never_trained_are_skipped_and_ones_that_did_keep_converging() -> None:
    model = small_model()
    first = model[0]
    first.requires_grad_(False)  # a frozen first layer: its average is its copy
    ema = ModelEma(model, decay=0.5, warmup=False)
    train_once(model)
    ema.update(model)
    before = first.weight.detach().clone()
    with torch.no_grad():
        first.weight.add_(1.0)  # moved behind the average's back: a skipped tensor stays put
    ema.update(model)
    assert torch.equal(ema.module[0].weight, before)
    assert "0.weight" not in ema.state_dict()["live"] and "3.weight" in ema.state_dict()["live"]

    first.requires_grad_(True)  # a stage unfreezes it: from now on it is averaged…
    ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, first.weight - 0.5)
    first.requires_grad_(False)  # …even when frozen again, until it reaches its weights
    ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, first.weight - 0.25)
    again = ModelEma(small_model(seed=1), decay=0.5, warmup=False)
    again.load_state_dict(ema.state_dict())
    again.update(model)
    torch.testing.assert_close(again.module[0].weight, first.weight - 0.125)


def test_the_state_has_the_models_own_keys_and_loads_back_exactly() -> None:
    model = small_model()
    ema = ModelEma(model, decay=0.95, warmup=True)
    for _ in range(2):
        train_once(model)
        ema.update(model)
    saved = ema.state_dict()
    assert set(saved["model"]) == set(model.state_dict())  # no module. prefix, no n_averaged
    small_model(seed=1).load_state_dict(saved["model"], strict=True)

    again = ModelEma(small_model(), decay=0.95, warmup=True)
    again.load_state_dict(saved)
    assert again.updates == 2 and again.decay_at(again.updates) == ema.decay_at(ema.updates)
    train_once(model)
    ema.update(model)
    again.update(model)
    assert all(torch.equal(a, b) for a, b in zip(ema.module.state_dict().values(),
                                                 again.module.state_dict().values(),
                                                 strict=True))


def test_a_split_models_suffix_is_mirrored_onto_the_average() -> None:
    from studio.engine.backbones import build_model
    from studio.engine.features import split_model

    model = build_model(ModelConfig(backbone="mobilenet_v3_small", weights="none"), 3, 32).model
    frozen = [n for n, _ in model.named_parameters() if not n.startswith("classifier")]
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    split = split_model(model.eval(), frozen)
    ema = ModelEma(model, decay=0.9, warmup=False)
    with torch.no_grad():
        for param in ema.module.classifier.parameters():
            param.mul_(0.5)  # make the average differ from the model after the cut

    suffix = ema.view(split.suffix, model)
    assert ema.view(split.suffix, model) is suffix and ema.view(model, model) is ema.module
    ours = {p.data_ptr() for p in ema.module.parameters()}
    assert {p.data_ptr() for p in suffix.parameters()} <= ours  # the average's own tensors
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = split.prefix(images)
        # relative tolerances only: a random-init network's logits are tiny (~1e-11)
        torch.testing.assert_close(suffix(features), ema.module.eval()(images), rtol=1e-4,
                                   atol=0)
        assert not torch.allclose(split.suffix.eval()(features), suffix(features), rtol=0.1,
                                  atol=0)


# -- best of two ----------------------------------------------------------------------------


def test_the_better_figure_picks_the_weights_and_a_tie_keeps_the_raw_ones() -> None:
    raw, good, same = (Validation(0.5, 0.80, 0.7, 0.7, 10), Validation(0.4, 0.90, 0.8, 0.8, 10),
                       Validation(0.5, 0.80, 0.7, 0.7, 10))
    assert better_weights("val_acc", raw, good) == ("ema", good)
    assert better_weights("val_loss", good, raw) == ("raw", good)  # lower loss wins
    assert better_weights("val_acc", raw, same)[0] == "raw"
    assert better_weights("val_acc", raw, Validation(float("nan"), float("nan"), 0, 0, 10)
                          )[0] == "raw"
    assert better_weights("val_acc", raw, None) == ("raw", raw)


def test_the_best_epoch_is_the_one_whose_ema_scored_highest(tmp_path: Path) -> None:
    trainer = Trainer(RunConfig(train=TrainConfig(monitor="macro_f1", ema=0.99)),
                      tmp_path / "run")
    # epoch 1: raw 0.6 beats the EMA; epoch 2: the EMA's 0.8 beats raw and epoch 1; epoch 3:
    # raw 0.7 is not better than 0.8
    history = [(Validation(1, 0.6, 0.6, 0.6, 10), Validation(1, 0.5, 0.5, 0.5, 10)),
               (Validation(1, 0.7, 0.5, 0.7, 10), Validation(1, 0.7, 0.8, 0.7, 10)),
               (Validation(1, 0.9, 0.7, 0.9, 10), Validation(1, 0.6, 0.6, 0.6, 10))]
    picked = [trainer._track_best(epoch, raw, ema) and trainer._weights
              for epoch, (raw, ema) in enumerate(history, start=1)]
    assert picked == ["raw", "ema", False]
    assert (trainer.state.best_epoch, trainer.state.best_metric,
            trainer.state.best_weights) == (2, 0.8, "ema")
    assert trainer._weights == "raw"  # epoch 3's own checkpoint offers its raw weights
    assert trainer._end(Outcome.COMPLETED, "done").best_weights == "ema"


# -- runs -----------------------------------------------------------------------------------


# Epoch 1 trains every layer; epoch 2 freezes the features, whose average must keep converging
STAGES = (StageSpec(epoch=2, freeze=FreezeSpec(freeze=("features",))),)


@pytest.fixture(scope="module")
def ema_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unbroken 2-epoch EMA run (decay 0.9, no warm-up, :data:`STAGES`); read-only."""
    run = tmp_path_factory.mktemp("ema") / "run"
    threads = torch.get_num_threads()
    enabled = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        result = Trainer(tiny_config(tiny_dataset, stages=STAGES), run).fit()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(enabled)
    assert result.outcome is Outcome.COMPLETED, result.message
    return run


def test_every_epoch_line_carries_the_ema_figures_and_which_weights_won(ema_run: Path) -> None:
    lines = epoch_lines(ema_run)
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        assert all(isinstance(line[key], float) for key in ("macro_f1", "balanced_acc",
                                                            *EMA_FIGURES))
        assert line["weights"] in ("raw", "ema")
    end = [r for r in read_metrics(ema_run) if r["event"] == "fit_end"][-1]
    assert end["best_weights"] == load_checkpoint(ema_run / "checkpoints" / "best.pt")["weights"]
    summary = summarize_run(ema_run)  # what `studio runs` and the Runs page show
    assert summary is not None and summary.best_weights == end["best_weights"]
    plain = EpochEnded(1, 0.1, 0.5, 0.2, 0.6, {}, 1.0, 10.0, True).to_json()
    assert not set(plain) & {"weights", *EMA_FIGURES}  # a run without EMA: lines as before


def test_last_pt_holds_the_average_under_the_models_keys_apart_from_the_raw_weights(
        ema_run: Path) -> None:
    last = load_checkpoint(ema_run / "checkpoints" / "last.pt")
    average = last["ema"]["model"]
    assert set(average) == set(last["model"])
    assert last["ema"]["updates"] == last["global_step"] == 6  # 24 images, batches of 8
    moved = [k for k, v in last["model"].items() if v.is_floating_point()
             and not torch.equal(v, average[k])]
    assert len(moved) > len(average) // 2  # EMA weights differ from raw


def test_a_best_pt_holding_ema_weights_is_what_evaluate_and_export_load(
        ema_run: Path, tmp_path: Path) -> None:
    import shutil

    run = Path(shutil.copytree(ema_run, tmp_path / "run"))
    best = run / "checkpoints" / "best.pt"
    payload = load_checkpoint(best)
    epoch = int(payload["epoch"])
    best.unlink()  # a link to last.pt: write a file of its own
    save_checkpoint(best, {**payload, "weights": "ema"})

    opened = open_run(run)
    assert all(torch.equal(v, payload["ema"]["model"][k])
               for k, v in opened.model.state_dict().items())
    assert evaluated_state({**payload, "weights": "raw"}) is payload["model"]
    evaluation = evaluate_run(run, device="cpu")
    line = next(line for line in epoch_lines(run) if line["epoch"] == epoch)
    assert evaluation.accuracy == pytest.approx(line["ema_val_acc"], abs=1e-6)
    assert evaluation.macro.f1 == pytest.approx(line["ema_macro_f1"], abs=1e-6)
    assert mean_loss(evaluation) == pytest.approx(line["ema_val_loss"], rel=1e-4)


def mean_loss(evaluation: Any) -> float:
    """The cross-entropy of an evaluation's probabilities, as validation computes it."""
    rows = torch.arange(evaluation.images)
    picked = torch.from_numpy(evaluation.probabilities)[rows, evaluation.targets]
    return float(-picked.double().log().mean())


class StopAfterEpoch(Callback):
    def __init__(self, stop: threading.Event, epoch: int) -> None:
        self.stop, self.epoch = stop, epoch

    def on_epoch_end(self, event: EpochEnded) -> None:
        if event.epoch == self.epoch:
            self.stop.set()


def test_a_run_stopped_after_epoch_1_resumes_to_the_same_average_as_an_unbroken_run(
        ema_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    stop = threading.Event()
    trainer = Trainer(tiny_config(tiny_dataset, stages=STAGES), tmp_path / "run",
                      [StopAfterEpoch(stop, 1)])
    assert trainer.fit(stop).outcome is Outcome.CANCELLED
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["ema"]["updates"] == 3

    result = Trainer.resume_run(tmp_path / "run").fit()

    assert result.outcome is Outcome.COMPLETED and result.epochs_completed == 2
    resumed = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["ema"]
    unbroken = load_checkpoint(ema_run / "checkpoints" / "last.pt")["ema"]
    assert resumed["updates"] == unbroken["updates"]
    assert "features.0.0.weight" in resumed["live"]  # frozen in epoch 2, averaged all along
    assert all(torch.equal(resumed["model"][k], v) for k, v in unbroken["model"].items())
    figures = [{k: line[k] for k in EMA_FIGURES} for line in epoch_lines(tmp_path / "run")]
    assert figures == [{k: line[k] for k in EMA_FIGURES} for line in epoch_lines(ema_run)]


def test_with_a_feature_cache_the_ema_is_validated_through_the_cached_suffix(
        tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = tiny_config(tiny_dataset, augment="none", freeze=FreezeSpec(preset="head_only"),
                         backbone="resnet18", feature_cache="auto")
    result = Trainer(config, run).fit()
    assert result.outcome is Outcome.COMPLETED, result.message
    assert any(r["event"] == "cache" and r["state"] in ("ready", "reused")
               for r in read_metrics(run))
    best = run / "checkpoints" / "last.pt"
    payload = load_checkpoint(best)
    best.unlink()
    save_checkpoint(best, {**payload, "weights": "ema"})
    evaluation = evaluate_run(run, checkpoint="last", device="cpu")  # the full EMA model
    line = epoch_lines(run)[-1]
    assert evaluation.accuracy == pytest.approx(line["ema_val_acc"], abs=1e-6)
    assert mean_loss(evaluation) == pytest.approx(line["ema_val_loss"], rel=1e-4)


# -- faces ----------------------------------------------------------------------------------


def test_a_decay_outside_its_range_is_one_sentence_naming_the_field() -> None:
    for decay in (1.0, 0.3, -0.1):
        with pytest.raises(ConfigError, match=r"^ema must be 0 \(off\) or a decay from 0\.5"):
            TrainConfig(ema=decay)
    with pytest.raises(ConfigError, match="ema must be a finite number"):
        TrainConfig(ema=float("nan"))
    assert TrainConfig(ema=0.5).ema == 0.5 and TrainConfig().ema == 0.0


def test_the_flags_reach_the_config_and_a_run_whose_ema_wins_says_so_and_evaluates_it(
        tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("studio.engine.trainer.better_weights",
                        lambda monitor, raw, ema: ("ema", ema))  # the average always wins
    run = tmp_path / "run"
    code = main(["train", "--data", str(tiny_dataset), "--out", str(run), "--backbone",
                 "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "1",
                 "--device", "cpu", "--precision", "fp32", "--workers", "0", "--no-tensorboard",
                 "--batch-size", "8", "--ema", "0.9", "--no-ema-warmup"])
    err = capsys.readouterr().err
    assert code == 0, err
    saved = RunConfig.load(run / "config.toml").train
    assert (saved.ema, saved.ema_warmup) == (0.9, False)
    assert "| EMA val loss " in err and "*best* (EMA weights)" in err
    assert "at epoch 1 (EMA weights)" in err  # the end line
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert (best["weights"], best["best"]["weights"]) == ("ema", "ema")
    line = epoch_lines(run)[-1]
    assert line["weights"] == "ema" and line["best"]
    evaluation = evaluate_run(run, device="cpu")  # best.pt by default: the EMA weights
    assert mean_loss(evaluation) == pytest.approx(line["ema_val_loss"], rel=1e-4)
    assert mean_loss(evaluation) != pytest.approx(line["val_loss"], rel=1e-3)

    assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "bad"),
                 "--ema", "1"]) == 1
    assert "--ema: ema must be 0 (off) or a decay" in capsys.readouterr().err
