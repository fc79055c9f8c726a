"""Studio's trainer against the plain tutorial loop, same data, model, weights, epochs, batch.

The reference is the canonical PyTorch fine-tuning tutorial loop: ``ImageFolder`` with the
standard transforms (Resize, CenterCrop, ToTensor, Normalize), ``requires_grad=False`` on the
frozen layers, SGD with momentum, fp32, the tutorial's ``num_workers=4`` (capped at the core
count), validation every epoch. On a CUDA GPU the reference also gets AMP (fp16 autocast with a
grad scaler) and channels_last, as the issue asks. Studio runs the same RunConfig a user would,
with its defaults: precision and memory format per device, the feature cache, the decoded-image
cache, DataLoader workers from the machine.

Both start from the same initial weights (a resnet18 saved to a .safetensors file that both
load) on the same generated JPEG dataset (train/ and val/ folders, so the split is the same),
one after the other in this process. Prints wall seconds (model build, data and validation
included), training images per second (train images × epochs / wall), the peak resident memory
above the start of each run (and peak CUDA memory on a GPU), the final validation accuracy, and
the speed-up.

    python benchmarks/bench_train.py                       # full: resnet18 @ 224, ~10 minutes
    python benchmarks/bench_train.py --scenarios head      # one scenario
    python benchmarks/bench_train.py --smoke               # seconds: the CI smoke run
    python benchmarks/bench_train.py --json results.json   # also write the figures

Targets (issue 7), 2-core CPU, resnet18 @ 224: head only ≥ 5× the reference with accuracy within
2 points; full fine-tuning ≥ 1.8×; on a GPU at least the reference's throughput.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from torch import nn  # noqa: E402

SCENARIOS = {  # name -> (freeze preset, up_to, epochs in the full run, what trains)
    "head": ("head_only", "", 10, "fc"),
    "last_block": ("up_to", "layer3", 3, "layer4 + fc"),
    "full": ("train_all", "", 2, "everything"),
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LR = 0.01


@dataclass
class Figures:
    scenario: str
    loop: str
    epochs: int
    wall_seconds: float
    images_per_second: float
    peak_memory_mb: float
    peak_cuda_mb: float | None
    val_accuracy: float
    note: str = ""


# -- data and weights ---------------------------------------------------------------------------


def make_dataset(root: Path, classes: int, train: int, val: int, size: int, seed: int = 0
                 ) -> Path:
    """Classes told apart by colour and shape, drawn at random places and sizes, as JPEGs."""
    rng = random.Random(seed)
    for c in range(classes):
        hue = c / classes
        base = tuple(int(255 * v) for v in _hsv(hue, 0.7, 0.9))
        for split, count in (("train", train), ("val", val)):
            folder = root / split / f"class_{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = Image.new("RGB", (size, size), tuple(rng.randrange(40, 216)
                                                             for _ in range(3)))
                draw = ImageDraw.Draw(image)
                for _ in range(3):
                    r = rng.randrange(size // 8, size // 3)
                    x, y = rng.randrange(r, size - r), rng.randrange(r, size - r)
                    box = (x - r, y - r, x + r, y + r)
                    colour = tuple(min(255, max(0, v + rng.randint(-30, 30))) for v in base)
                    [draw.ellipse, draw.rectangle, draw.pieslice][c % 3](
                        box, fill=colour, **({"start": 30, "end": 330} if c % 3 == 2 else {}))
                image.save(folder / f"{i:04d}.jpg", quality=90)
    return root


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h, s, v)


def initial_weights(path: Path, classes: int, data: Path, size: int) -> Path:
    """A random resnet18 whose BatchNorm statistics are measured on the training images, as a
    pretrained network's are on its own data. (Pretrained weights cannot be downloaded here;
    with the init statistics, mean 0 and variance 1, frozen BatchNorm layers would normalise
    nothing, and a loop that keeps them would be judged on an artefact.)"""
    from safetensors.torch import save_file
    from torchvision import datasets, transforms
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, classes)
    tf = transforms.Compose([transforms.Resize(round(size * 256 / 224)),
                             transforms.CenterCrop(size), transforms.ToTensor(),
                             transforms.Normalize(MEAN, STD)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(data / "train"), tf),
                                         batch_size=64)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over every batch
    model.train()
    with torch.no_grad():
        for images, _ in loader:
            model(images)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# -- memory -------------------------------------------------------------------------------------


class PeakMemory:
    """Samples this process's resident set every 20 ms; the peak above the start, in MB."""

    def __init__(self) -> None:
        _give_back_freed_memory()  # or the previous run's freed pages hide this run's peak
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    @property
    def megabytes(self) -> float:
        return (self.peak - self.start) / 1e6

    @staticmethod
    def cuda_megabytes() -> float | None:
        return torch.cuda.max_memory_allocated() / 1e6 if torch.cuda.is_available() else None


def _give_back_freed_memory() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the figures may then understate later runs' peaks


def _rss() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- the reference loop -------------------------------------------------------------------------


def reference_loop(data: Path, weights: Path, scenario: str, epochs: int, batch: int,
                   size: int, workers: int, amp: bool, seed: int = 0) -> Figures:
    """The tutorial: ImageFolder, standard transforms, requires_grad=False, SGD, fp32."""
    from safetensors.torch import load_file
    from torchvision import datasets, transforms
    from torchvision.models import resnet18

    preset, up_to, _, _ = SCENARIOS[scenario]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with PeakMemory() as memory:
        began = time.perf_counter()
        tf = transforms.Compose([transforms.Resize(round(size * 256 / 224)),
                                 transforms.CenterCrop(size), transforms.ToTensor(),
                                 transforms.Normalize(MEAN, STD)])
        train_set = datasets.ImageFolder(str(data / "train"), tf)
        val_set = datasets.ImageFolder(str(data / "val"), tf)
        extra = {"num_workers": workers, "persistent_workers": workers > 0}
        generator = torch.Generator().manual_seed(seed)
        train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch, shuffle=True,
                                                   generator=generator, **extra)
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=batch, **extra)
        model = resnet18(weights=None)
        model.fc = nn.Linear(model.fc.in_features, len(train_set.classes))
        model.load_state_dict(load_file(str(weights)))
        trains = _trainable(preset, up_to)
        for name, param in model.named_parameters():
            param.requires_grad = trains(name)
        model = model.to(device)
        if amp:
            model = model.to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=LR, momentum=0.9)
        criterion = nn.CrossEntropyLoss()
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        accuracy = 0.0
        for _ in range(epochs):
            model.train()
            for images, targets in train_loader:
                images, targets = images.to(device), targets.to(device)
                if amp:
                    images = images.to(memory_format=torch.channels_last)
                optimizer.zero_grad()
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    loss = criterion(model(images), targets)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            model.eval()
            correct = 0
            with torch.no_grad():
                for images, targets in val_loader:
                    images, targets = images.to(device), targets.to(device)
                    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                        correct += (model(images).argmax(1) == targets).sum().item()
            accuracy = correct / len(val_set)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - began
    note = f"fp32, {workers} workers" if not amp else f"AMP fp16 + channels_last, {workers} workers"
    return Figures(scenario, "reference", epochs, wall, len(train_set) * epochs / wall,
                   memory.megabytes, memory.cuda_megabytes(), accuracy, note)


def _trainable(preset: str, up_to: str) -> Any:
    if preset == "head_only":
        return lambda name: name.startswith("fc.")
    if preset == "up_to":
        return lambda name: name.startswith(("layer4.", "fc."))
    return lambda name: True


# -- studio -------------------------------------------------------------------------------------


def studio_run(data: Path, weights: Path, scenario: str, epochs: int, batch: int, size: int,
               out: Path, precision: str = "auto", seed: int = 0) -> Figures:
    from studio.engine.config import (
        DataConfig,
        FreezeSpec,
        ModelConfig,
        OptimConfig,
        RunConfig,
        TrainConfig,
    )
    from studio.engine.events import Callback
    from studio.engine.trainer import Trainer

    preset, up_to, _, _ = SCENARIOS[scenario]
    config = RunConfig(
        data=DataConfig(root=str(data), image_size=size, augment="none"),
        model=ModelConfig(backbone="resnet18", weights=str(weights)),
        freeze=FreezeSpec(preset=preset, up_to=up_to),
        optim=OptimConfig(optimizer="sgd", lr=LR, momentum=0.9, weight_decay=0.0,
                          schedule="none"),
        train=TrainConfig(epochs=epochs, batch_size=batch, precision=precision, seed=seed))

    class Listen(Callback):
        def __init__(self) -> None:
            self.accuracy = math.nan
            self.notes: list[str] = []
            self.train_images = 0

        def on_fit_start(self, event: Any) -> None:
            self.train_images = event.train_images
            self.notes.append(f"{event.precision}"
                              f"{' + channels_last' if event.channels_last else ''}")

        def on_epoch_end(self, event: Any) -> None:
            self.accuracy = event.val_acc

        def on_cache(self, event: Any) -> None:
            if event.state != "building":
                self.notes.append(event.describe())

    listen = Listen()
    with PeakMemory() as memory:
        began = time.perf_counter()
        result = Trainer(config, out, [listen]).fit()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - began
    if result.outcome.value != "completed":
        raise SystemExit(f"studio run failed: {result.message}")
    return Figures(scenario, "studio", epochs, wall, listen.train_images * epochs / wall,
                   memory.megabytes, memory.cuda_megabytes(), listen.accuracy,
                   "; ".join(listen.notes))


# -- the report ---------------------------------------------------------------------------------


def table(rows: list[Figures]) -> str:
    cuda = any(r.peak_cuda_mb is not None for r in rows)
    head = (f"{'scenario':<12} {'loop':<10} {'epochs':>6} {'wall s':>8} {'img/s':>8} "
            f"{'peak MB':>8}{' cuda MB' if cuda else ''} {'val acc':>8} {'speed-up':>8}")
    lines = [head, "-" * len(head)]
    reference: dict[str, Figures] = {}
    for row in rows:
        if row.loop == "reference":
            reference[row.scenario] = row
        ratio = ""
        if row.loop == "studio" and row.scenario in reference:
            ratio = f"{reference[row.scenario].wall_seconds / row.wall_seconds:.2f}×"
        cuda_text = f" {row.peak_cuda_mb:8.0f}" if cuda and row.peak_cuda_mb is not None else ""
        lines.append(f"{row.scenario:<12} {row.loop:<10} {row.epochs:>6} "
                     f"{row.wall_seconds:8.1f} {row.images_per_second:8.1f} "
                     f"{row.peak_memory_mb:8.0f}{cuda_text} {row.val_accuracy:8.1%} {ratio:>8}")
    lines.append("")
    lines += [f"{r.scenario}/{r.loop}: {r.note}" for r in rows if r.note]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS),
                        default=list(SCENARIOS))
    parser.add_argument("--size", type=int, default=224, help="input size (default 224)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=30)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, help="the same for every scenario (default: "
                                                   "head 10, last_block 3, full 2)")
    parser.add_argument("--ref-workers", type=int,
                        default=min(4, os.cpu_count() or 1),
                        help="reference DataLoader workers (the tutorial's 4, at most the "
                             "cores)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="studio's precision (default auto: what a user gets)")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed of both loops")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny: 3 classes × 6 images at 32 px, 1–2 epochs (for CI)")
    parser.add_argument("--out", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.classes, args.train_per_class, args.val_per_class = 32, 3, 6, 2
        args.batch_size, args.ref_workers = 4, 0
    amp = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        work = args.out or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        os.environ["STUDIO_CACHE_DIR"] = str(work / "cache")  # no features from earlier runs
        data = work / "data"
        if not data.is_dir():
            make_dataset(data, args.classes, args.train_per_class, args.val_per_class,
                         max(args.size + args.size // 7, 40))
        weights = initial_weights(work / "initial.safetensors", args.classes, data, args.size)
        device = (torch.cuda.get_device_name(0) if amp else
                  f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads")
        print(f"resnet18 @ {args.size} px, {args.classes} classes × {args.train_per_class} "
              f"train / {args.val_per_class} val JPEGs, batch {args.batch_size}; {device}; "
              f"torch {torch.__version__}", flush=True)
        rows: list[Figures] = []
        for number, scenario in enumerate(args.scenarios):
            epochs = args.epochs or (1 + (scenario == "head") if args.smoke
                                     else SCENARIOS[scenario][2])
            print(f"{scenario}: reference loop…", flush=True)
            rows.append(reference_loop(data, weights, scenario, epochs, args.batch_size,
                                       args.size, args.ref_workers, amp, args.seed))
            print(f"{scenario}: studio…", flush=True)
            rows.append(studio_run(data, weights, scenario, epochs, args.batch_size, args.size,
                                   work / f"run-{number}-{scenario}-{time.time_ns()}",
                                   args.precision, args.seed))
        print()
        print(table(rows))
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
