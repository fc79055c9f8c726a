"""What model EMA costs per optimizer step: :meth:`ModelEma.update` (one foreach lerp over every
parameter and buffer) next to a training step of the same model and batch.

    python benchmarks/bench_ema.py                           # CPU, resnet18 at 224 px, batch 32
    python benchmarks/bench_ema.py --device cuda --backbone resnet50
    python benchmarks/bench_ema.py --smoke                   # seconds: tiny sizes

The update's cost does not depend on the batch or the image size, only on how many of the
model's tensors can move; the step's does, so the share printed is for the batch given. The
last line is a head-only run's update (every other tensor is frozen, and skipped).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(work: Callable[[], None], repeats: int, sync: Callable[[], None]) -> float:
    """The median seconds of ``work`` over ``repeats`` runs, after one warm-up run."""
    work()
    sync()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        sync()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.backbone, args.batch_size, args.image_size, args.repeats = (
            "mobilenet_v3_small", 4, 32, 3)
    sys.path.insert(0, str(ROOT))
    import torch

    from studio.engine.backbones import build_model
    from studio.engine.config import ModelConfig
    from studio.engine.ema import ModelEma
    from studio.engine.record import cpu_name

    device = torch.device(args.device)
    model = build_model(ModelConfig(backbone=args.backbone, weights="none"), 10,
                        args.image_size).model.to(device)
    ema = ModelEma(model, decay=0.999, warmup=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), targets).backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    step_seconds = timed(step, args.repeats, sync)
    update_seconds = timed(lambda: ema.update(model), args.repeats * 5, sync)
    params = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"{args.backbone} ({params / 1e6:.1f}M parameters) on {where}, "
          f"{torch.get_num_threads()} threads")
    print(f"training step, batch {args.batch_size} at {args.image_size} px: "
          f"{step_seconds * 1e3:.1f} ms")
    print(f"EMA update: {update_seconds * 1e3:.2f} ms "
          f"({100 * update_seconds / step_seconds:.1f} % of the step)")
    head = ModelEma(model, decay=0.999, warmup=True)
    model.eval()  # a frozen backbone's BatchNorm keeps its statistics
    last = list(model.children())[-1]
    last.train()
    for param in model.parameters():
        param.requires_grad_(any(param is p for p in last.parameters()))
    head_seconds = timed(lambda: head.update(model), args.repeats * 5, sync)
    print(f"EMA update with only the last layer ({type(last).__name__}) training: "
          f"{head_seconds * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
