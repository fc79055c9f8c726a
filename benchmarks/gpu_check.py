"""The GPU check: one table of what a lent CUDA machine must show (issue 14), engine only.

Each row is a small check: environment, fp16 + GradScaler and bf16 training, channels_last on
and off, the feature and image caches, pinned memory, stopping within a batch, OOM recovery,
memory back to its baseline after a run, an ONNX export verified from a run trained on this
device, and throughput of resnet18 / resnet50 / vit_b_16 against the plain AMP + channels_last
loop. A row that raises is FAILED with its one-line error, and the script goes on.

    python benchmarks/gpu_check.py                 # on a CUDA machine, under 8 minutes
    python benchmarks/gpu_check.py --cpu           # the tiny CPU smoke version, seconds
    python benchmarks/gpu_check.py --json rows.json
    python benchmarks/gpu_check.py --only throughput      # the rows whose names start so

Nothing is downloaded: data is generated in a temporary folder, weights are "none", and
STUDIO_RUNS_DIR, STUDIO_CACHE_DIR and STUDIO_LOG_FILE point into that folder. No Qt is imported.

On the device machine (torch, torchvision, onnxruntime, no package registry), the engine still
needs ``tomli_w`` and ``platformdirs`` at import time (``onnx`` and ``onnxscript`` for the
export row). Fetch their wheels here, carry ``.device-wheels/`` (git-ignored), install there:

    python -m pip download tomli-w platformdirs --no-deps -d .device-wheels/wheels   # here
    python -m pip install --no-index --find-links .device-wheels/wheels \\
        --target .device-wheels/site tomli-w platformdirs                          # device
    PYTHONPATH=.device-wheels/site python benchmarks/gpu_check.py --json $OUT/gpu.json

(``pip download`` fetches wheels for this machine's Python; for the device's 3.12 add
``--python-version 3.12 --only-binary :all:`` — both packages are pure Python, so either
works.) Without ``onnx`` on the device the export row is skipped and says so.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from bench_train import MEAN, STD, PeakMemory, _give_back_freed_memory, _rss  # noqa: E402
from bench_train import make_dataset as make_bench_dataset  # noqa: E402
from torch import nn  # noqa: E402

NO_CUDA = "no CUDA device: run with --cpu for the smoke version"
THROUGHPUT_MODELS = ("resnet18", "resnet50", "vit_b_16")
LR = 0.01


@dataclass
class Row:
    """One line of the table: what was checked, how it went, and the figures it measured."""

    check: str
    result: str  # "ok", "FAILED" or "skipped"
    why: str = ""  # the error of a FAILED row, the reason of a skipped one
    figures: str = ""
    seconds: float = 0.0

    def describe_result(self) -> str:
        return f"{self.result}: {self.why}" if self.why else self.result


class Skip(Exception):
    """Raised by a check that does not apply here; its message is the reason."""

    def __init__(self, reason: str, figures: str = "") -> None:
        super().__init__(reason)
        self.figures = figures


class Failed(Exception):
    """Raised by a check whose assertion did not hold; its message says what was seen."""


@dataclass
class Setup:
    """What every check shares: the device, the sizes, the data and the scratch folder."""

    device: torch.device
    work: Path
    data: Path
    size: int
    batch: int
    epochs: int
    backbone: str
    throughput_data: Path
    throughput_size: int
    throughput_models: tuple[str, ...]
    runs: int = 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def run_dir(self, name: str) -> Path:
        self.runs += 1
        return self.work / "runs" / f"{self.runs:02d}-{name}"


# -- running the engine -------------------------------------------------------------------------


def listener(on_batch: Callable[[Any], None] | None = None) -> Any:
    """A Callback that keeps the events of one fit (its class is made here, so that the engine
    is first imported after main has pointed the studio folders into the scratch folder)."""
    from studio.engine.events import Callback

    class _Listen(Callback):
        def __init__(self) -> None:
            self.started: Any = None
            self.batches: list[Any] = []
            self.epochs: list[Any] = []
            self.caches: list[Any] = []
            self.warnings: list[str] = []
            self.ended: Any = None
            self.ended_at = 0.0

        def on_fit_start(self, event: Any) -> None:
            self.started = event

        def on_batch_end(self, event: Any) -> None:
            self.batches.append(event)
            if on_batch is not None:
                on_batch(event)

        def on_epoch_end(self, event: Any) -> None:
            self.epochs.append(event)

        def on_cache(self, event: Any) -> None:
            self.caches.append(event)

        def on_warning(self, event: Any) -> None:
            self.warnings.append(event.message)

        def on_fit_end(self, event: Any) -> None:
            self.ended, self.ended_at = event, time.perf_counter()

        def cache(self, kind: str) -> Any:
            final = [c for c in self.caches if c.kind == kind and c.state != "building"]
            return final[-1] if final else None

    return _Listen()


def config_for(setup: Setup, *, backbone: str | None = None, size: int | None = None,
               data: Path | None = None, preset: str = "train_all", epochs: int | None = None,
               **train: Any) -> Any:
    """A RunConfig of a short run on the setup's device; ``train`` overrides TrainConfig."""
    from studio.engine.config import (
        DataConfig,
        FreezeSpec,
        ModelConfig,
        OptimConfig,
        RunConfig,
        TrainConfig,
    )

    settings: dict[str, Any] = {  # fp32 on the CPU: bf16 autocast is slow there, and tiny
        "epochs": epochs or setup.epochs, "batch_size": setup.batch, "device": setup.device.type,
        "precision": "auto" if setup.cuda else "fp32", "feature_cache": "off",
        "tensorboard": False, **train}
    return RunConfig(
        data=DataConfig(root=str(data or setup.data), image_size=size or setup.size,
                        augment="none"),
        model=ModelConfig(backbone=backbone or setup.backbone, weights="none"),
        freeze=FreezeSpec(preset=preset),
        optim=OptimConfig(optimizer="sgd", lr=LR, momentum=0.9, weight_decay=0.0,
                          schedule="none"),
        train=TrainConfig(**settings))


def fit(setup: Setup, name: str, config: Any, stop: threading.Event | None = None,
        on_batch: Callable[[Any], None] | None = None) -> tuple[Any, Any]:
    """Run one fit; (trainer, listener). Raises Failed unless it completed (or was stopped)."""
    from studio.engine.trainer import Trainer

    listen = listener(on_batch)
    trainer = Trainer(config, setup.run_dir(name), [listen])
    ended = trainer.fit(stop)
    if ended.outcome.value not in ("completed", "cancelled"):
        raise Failed(f"the fit ended {ended.outcome.value}: {ended.message}")
    return trainer, listen


def train_pace(listen: Any) -> float:
    """Images per second of the last epoch's training pass (the loop's own figure)."""
    return listen.epochs[-1].images_per_second if listen.epochs else math.nan


# -- the checks ---------------------------------------------------------------------------------


def check_environment(setup: Setup) -> str:
    import torchvision

    import studio
    from studio.engine.record import cpu_name

    parts = [f"torch {torch.__version__}", f"torchvision {torchvision.__version__}",
             f"studio {studio.__version__}", f"python {platform.python_version()}"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        parts += [f"CUDA {torch.version.cuda}", f"cuDNN {torch.backends.cudnn.version()}",
                  f"{props.name} {props.total_memory / 2**30:.0f} GiB",
                  f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"]
    else:
        parts.append("no CUDA")
    parts.append(f"{cpu_name()}, {os.cpu_count()} cores")
    return ", ".join(parts)


def _check_precision(setup: Setup, precision: str) -> str:
    _, listen = fit(setup, precision, config_for(setup, precision=precision))
    if listen.started.precision != precision:
        raise Failed(f"the run trained in {listen.started.precision}, not {precision}")
    losses = [e.train_loss for e in listen.epochs]
    if not losses or not all(math.isfinite(v) for v in losses + [b.loss for b in listen.batches]):
        raise Failed(f"a loss was not finite: epoch losses {losses}")
    trend = " → ".join(f"{v:.3f}" for v in losses)
    if losses[-1] > losses[0] * 1.05:
        raise Failed(f"the training loss did not go down: {trend}")
    return f"{train_pace(listen):.0f} img/s, loss {trend}"


def check_fp16(setup: Setup) -> str:
    if not setup.cuda:
        raise Skip("fp16 needs CUDA")
    return _check_precision(setup, "fp16") + " (GradScaler)"


def check_bf16(setup: Setup) -> str:
    if setup.cuda and not torch.cuda.is_bf16_supported():
        raise Skip("this GPU has no bf16")
    return _check_precision(setup, "bf16")


def check_channels_last(setup: Setup) -> str:
    paces = {}
    for on in (True, False):
        config = config_for(setup, backbone="resnet18", channels_last=on)
        _, listen = fit(setup, f"channels-last-{on}", config)
        if listen.started.channels_last != on:
            raise Failed(f"asked for channels_last={on}, the run used "
                         f"{listen.started.channels_last}")
        paces[on] = train_pace(listen)
    return (f"on {paces[True]:.0f} img/s, off {paces[False]:.0f} img/s "
            f"({paces[True] / paces[False]:.2f}×)")


def check_caches(setup: Setup) -> str:
    _, head = fit(setup, "feature-cache",
                  config_for(setup, preset="head_only", feature_cache="auto"))
    features = head.cache("features")
    if features is None or features.state not in ("ready", "reused"):
        raise Failed(f"head-only run: {features.describe() if features else 'no feature cache'}")
    _, full = fit(setup, "image-cache", config_for(setup, image_cache="auto"))
    images = full.cache("images")
    if images is None or images.state != "ready":
        raise Failed(f"full run: {images.describe() if images else 'no image cache report'}")
    return f"{features.describe()}; {images.describe()}"


def check_pinned_memory(setup: Setup) -> str:
    seen: dict[str, Any] = {}

    def look(event: Any) -> None:  # during the fit: a finished one releases its loaders
        if not seen:
            seen.update(settings=dict(trainer.parts.loader_settings),
                        pinned=bool(trainer.train_loader.pin_memory))

    from studio.engine.trainer import Trainer

    trainer = Trainer(config_for(setup, epochs=1), setup.run_dir("pinned"), [listener(look)])
    ended = trainer.fit()
    if ended.outcome.value != "completed" or not seen:
        raise Failed(f"the fit ended {ended.outcome.value}: {ended.message}")
    settings, pinned = seen["settings"], seen["pinned"]
    text = (f"train loader pin_memory={pinned} (parts.loader_settings: "
            f"pin_memory={settings['pin_memory']}, {settings['num_workers']} workers)")
    if pinned != setup.cuda:
        raise Failed(f"{text}; expected pin_memory={setup.cuda} on {setup.device.type}")
    if not setup.cuda:
        raise Skip("pinning is for CUDA", text)
    return text


def check_stop(setup: Setup) -> str:
    stop = threading.Event()
    asked: list[float] = []

    def first_batch(event: Any) -> None:
        if not asked:
            asked.append(time.perf_counter())
            stop.set()

    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = fit(setup, "stop", config_for(setup, epochs=50), stop, first_batch)
            box["returned"] = time.perf_counter()  # workers shut down too
        except BaseException as error:  # handed to the main thread
            box["error"] = error

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout=300)
    if thread.is_alive():
        stop.set()
        raise Failed("the fit did not end within 300 s of the stop")
    if "error" in box:
        raise box["error"]
    _, listen = box["result"]
    if not asked:
        raise Failed("no BatchEnded came before the fit ended")
    outcome = listen.ended.outcome.value
    if outcome != "cancelled":
        raise Failed(f"the fit ended {outcome}, not cancelled")
    return (f"{listen.ended_at - asked[0]:.2f} s from the stop to FitEnded (cancelled), "
            f"{box['returned'] - asked[0]:.2f} s until fit() returned, "
            f"after {len(listen.batches)} batch event(s)")


OOM_CAP_GIB = 4  # the memory cap under which resnet50's batch of 256 at 224 px cannot fit


def check_oom(setup: Setup) -> str:
    """A real CUDA out-of-memory: resnet50, batch 256 at 224 px, under a 4 GiB allocator cap
    (``set_per_process_memory_fraction``); the run must halve its pieces and finish the epoch."""
    if not setup.cuda:
        raise Skip("a real out-of-memory needs CUDA (tests/engine/test_oom.py injects one on "
                   "the CPU)")
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, OOM_CAP_GIB * 2**30 / total))
    try:
        config = config_for(setup, backbone="resnet50", size=setup.throughput_size,
                            data=setup.throughput_data, epochs=1, batch_size=256)
        _, listen = fit(setup, "oom", config)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        gc.collect()
        torch.cuda.empty_cache()
    said = [w for w in listen.warnings if "out of memory" in w]
    if not said:
        raise Failed(f"resnet50's batch of 256 under a {OOM_CAP_GIB} GiB cap did not run out "
                     f"of memory (no warning came)")
    if not listen.epochs:
        raise Failed("the epoch did not finish after the out-of-memory")
    return (f"{len(said)} halving(s) under a {OOM_CAP_GIB} GiB cap; last: {said[-1]}; epoch "
            f"1 done, loss {listen.epochs[-1].train_loss:.3f}")


def check_memory(setup: Setup) -> str:
    config = config_for(setup, epochs=1)
    if setup.cuda:
        fit(setup, "memory-warm-up", config)
        _settle()
        before = torch.cuda.memory_allocated()
        trainer = fit(setup, "memory", config)
        del trainer
        _settle()
        after = torch.cuda.memory_allocated()
        margin, unit = 8e6, "CUDA allocated"
    else:
        fit(setup, "memory-warm-up", config)
        _settle()
        before = _rss()
        trainer = fit(setup, "memory", config)
        del trainer
        _settle()
        after = _rss()
        margin, unit = 64e6, "RSS"
    delta = (after - before) / 1e6
    text = f"{unit} {before / 1e6:.0f} → {after / 1e6:.0f} MB ({delta:+.1f} MB)"
    if after - before > margin:
        raise Failed(f"{text}, more than {margin / 1e6:.0f} MB above the baseline")
    return text


def _settle() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    _give_back_freed_memory()


def check_export(setup: Setup) -> str:
    import importlib.util

    from studio.engine.export.run_export import export_run

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"{' and '.join(missing)} not installed here (see the script's docstring)")
    trainer, _ = fit(setup, "export", config_for(setup, epochs=1))
    report = export_run(trainer.paths.root, "onnx")
    parity = "; ".join(r.parity.describe() for r in report.results
                       if getattr(r, "parity", None) is not None)
    if not report.verified:
        raise Failed(f"not verified: {parity or report.dataset_note}")
    return f"verified on {report.images_checked} images ({parity})"


def check_lora(setup: Setup) -> str:
    """LoRA on the backbone's last three adaptable layers: only adapters and head move, and
    the merged export verifies."""
    import dataclasses
    import importlib.util

    from studio.engine.backbones import describe_model
    from studio.engine.checkpoint import load_checkpoint
    from studio.engine.config import LoraSpec
    from studio.engine.export.run_export import export_run
    from studio.engine.lora import adaptable_layers
    from studio.engine.params import is_adapter

    if not setup.cuda:  # the suite's CPU smoke: tests/engine/test_lora.py covers the CPU
        raise Skip("LoRA is checked on the CPU by tests/engine/test_lora.py")
    if importlib.util.find_spec("peft") is None:
        raise Skip("peft not installed here")
    config = config_for(setup, preset="head_only", epochs=1)
    shape = describe_model(config.model, 2, setup.size)
    layers = tuple(adaptable_layers(shape.model, shape.head, setup.size)[-3:])
    config = dataclasses.replace(config, lora=LoraSpec(targets=layers, rank=4))
    trainer, listen = fit(setup, "lora", config)
    state = load_checkpoint(trainer.paths.last)["model"]
    moved = [k for k in state if is_adapter(k) and ".lora_B." in k and state[k].abs().sum() > 0]
    if not moved:
        raise Failed("no LoRA adapter moved in an epoch")
    report = export_run(trainer.paths.root, "onnx")
    if not report.verified:
        raise Failed(f"the merged export did not verify: {report.dataset_note}")
    return (f"{len(layers)} adapted layers, {listen.started.trainable_params:,} trainable, "
            f"{train_pace(listen):.0f} img/s, merged ONNX verified")


def check_throughput(setup: Setup, backbone: str) -> str:
    if backbone not in setup.throughput_models:
        raise Skip("--cpu measures resnet18 only")
    data, size = setup.throughput_data, setup.throughput_size
    with PeakMemory() as memory:
        began = time.perf_counter()
        config = config_for(setup, backbone=backbone, size=size, data=data, epochs=1,
                            precision="auto")  # what a user gets
        _, listen = fit(setup, f"throughput-{backbone}", config)
        if setup.cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - began
    studio = listen.started.train_images / wall
    cuda_mb = memory.cuda_megabytes()
    reference = reference_images_per_second(setup, backbone)
    peak = f", peak CUDA {cuda_mb:.0f} MB" if cuda_mb is not None else ""
    return (f"studio {studio:.0f} img/s ({listen.started.precision}"
            f"{' + channels_last' if listen.started.channels_last else ''}{peak}), "
            f"reference {reference:.0f} img/s "
            f"({'AMP fp16 + channels_last' if setup.cuda else 'fp32'}), "
            f"{studio / reference:.2f}×")


def reference_images_per_second(setup: Setup, backbone: str) -> float:
    """The tutorial loop of bench_train (ImageFolder, standard transforms, SGD), for any
    torchvision model, fully fine-tuned for one epoch with validation: AMP fp16 + channels_last
    on CUDA, fp32 on the CPU. Training images per wall second."""
    from torchvision import datasets, models, transforms

    device, amp = setup.device, setup.cuda
    size, data = setup.throughput_size, setup.throughput_data
    workers = min(4, os.cpu_count() or 1) if setup.cuda else 0
    began = time.perf_counter()
    tf = transforms.Compose([transforms.Resize(round(size * 256 / 224)),
                             transforms.CenterCrop(size), transforms.ToTensor(),
                             transforms.Normalize(MEAN, STD)])
    train_set = datasets.ImageFolder(str(data / "train"), tf)
    val_set = datasets.ImageFolder(str(data / "val"), tf)
    extra: dict[str, Any] = {"num_workers": workers, "pin_memory": amp}
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=setup.batch, shuffle=True,
                                               **extra)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=setup.batch, **extra)
    kwargs = {"image_size": size} if backbone.startswith("vit") else {}
    model = getattr(models, backbone)(weights=None, num_classes=len(train_set.classes), **kwargs)
    model = model.to(device)
    layout = torch.channels_last if amp else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    model.train()
    for images, targets in train_loader:
        images = images.to(device, non_blocking=True, memory_format=layout)
        targets = targets.to(device, non_blocking=True)
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = criterion(model(images), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    model.eval()
    with torch.no_grad():
        for images, _ in val_loader:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                model(images.to(device, memory_format=layout))
    if amp:
        torch.cuda.synchronize()
    return len(train_set) / (time.perf_counter() - began)


CHECKS: list[tuple[str, Callable[[Setup], str]]] = [
    ("environment", check_environment),
    ("fp16 + GradScaler", check_fp16),
    ("bf16", check_bf16),
    ("channels_last on/off", check_channels_last),
    ("feature + image cache", check_caches),
    ("pinned memory", check_pinned_memory),
    ("stop within a batch", check_stop),
    ("OOM recovered", check_oom),
    ("memory back to baseline", check_memory),
    ("ONNX export verified", check_export),
    ("LoRA trains and merges", check_lora),
    *((f"throughput {name}", lambda setup, name=name: check_throughput(setup, name))
      for name in THROUGHPUT_MODELS),
]


def run_check(name: str, check: Callable[[Setup], str], setup: Setup) -> Row:
    """One row: ok with the figures, skipped with the reason, or FAILED with one line."""
    began = time.perf_counter()
    try:
        row = Row(name, "ok", figures=check(setup))
    except Skip as reason:
        row = Row(name, "skipped", why=str(reason), figures=reason.figures)
    except Exception as error:  # any error ends this row only
        traceback.print_exc(file=sys.stderr)
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        row = Row(name, "FAILED", why=f"{type(error).__name__}: {message}"
                  if not isinstance(error, Failed) else message)
    row.seconds = time.perf_counter() - began
    return row


# -- the report ---------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    width = max(len(r.check) for r in rows)
    results = [r.describe_result() for r in rows]
    result_width = min(48, max(len(t) for t in results))
    head = f"{'check':<{width}}  {'result':<{result_width}}  {'s':>6}  figures"
    lines = [head, "-" * max(len(head), 100)]
    for row, result in zip(rows, results, strict=True):
        lines.append(f"{row.check:<{width}}  {result:<{result_width}}  {row.seconds:6.1f}  "
                     f"{row.figures}".rstrip())
    return "\n".join(lines)


@dataclass
class Sizes:
    size: int
    classes: int
    train: int
    val: int
    batch: int
    epochs: int
    backbone: str
    throughput_size: int
    throughput_train: int
    throughput_models: tuple[str, ...] = field(default=THROUGHPUT_MODELS)


CPU_SIZES = Sizes(size=32, classes=3, train=8, val=2, batch=4, epochs=2,
                  backbone="mobilenet_v3_small",
                  throughput_size=32, throughput_train=8, throughput_models=("resnet18",))
CUDA_SIZES = Sizes(size=224, classes=10, train=16, val=4, batch=32, epochs=3,
                   backbone="resnet18", throughput_size=224, throughput_train=40)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true",
                        help="the tiny CPU smoke version (seconds)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--only", nargs="+", metavar="CHECK",
                        help="run only the checks whose names start with these words")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    sizes = CPU_SIZES if args.cpu else CUDA_SIZES
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = Path(scratch)
        os.environ["STUDIO_RUNS_DIR"] = str(work / "runs")
        os.environ["STUDIO_CACHE_DIR"] = str(work / "cache")
        os.environ["STUDIO_LOG_FILE"] = str(work / "studio.log")
        source = max(sizes.size + sizes.size // 7, 40)
        data = make_bench_dataset(work / "data", sizes.classes, sizes.train, sizes.val, source)
        throughput = data
        if (sizes.throughput_train, sizes.throughput_size) != (sizes.train, sizes.size):
            throughput = make_bench_dataset(
                work / "throughput", sizes.classes, sizes.throughput_train,
                max(2, sizes.throughput_train // 8),
                max(sizes.throughput_size + sizes.throughput_size // 7, 40), seed=1)
        setup = Setup(torch.device("cpu" if args.cpu else "cuda"), work, data, sizes.size,
                      sizes.batch, sizes.epochs, sizes.backbone, throughput,
                      sizes.throughput_size, sizes.throughput_models)
        print(f"gpu_check on {setup.device.type}: {sizes.classes} classes × {sizes.train} "
              f"train / {sizes.val} val at {sizes.size} px, {sizes.backbone}, batch "
              f"{sizes.batch}, {sizes.epochs} epochs", flush=True)
        rows: list[Row] = []
        for name, check in CHECKS:
            if args.only and not any(name.startswith(word) for word in args.only):
                continue
            print(f"{name}…", flush=True)
            rows.append(run_check(name, check, setup))
    print()
    print(table(rows))
    print(f"\n{sum(r.result == 'FAILED' for r in rows)} FAILED, "
          f"{time.perf_counter() - began:.0f} s in all")
    if args.json:
        qt = sorted(m for m in sys.modules if m.split(".")[0] in ("PySide6", "pyqtgraph"))
        args.json.write_text(json.dumps({"device": setup.device.type, "qt_modules": qt,
                                         "rows": [asdict(r) for r in rows]}, indent=2))
    return 1 if any(r.result == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
