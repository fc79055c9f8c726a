"""Images per second of the same run with 1, 2, … processes (DistributedDataParallel through
`studio train --nproc-per-node N`), the batch per process fixed.

Every world size trains the same config (resnet18, every layer training, no feature cache,
decoded images cached) on a generated dataset, through the CLI exactly as a user would. The
figure of a run is the mean ``images_per_second`` of its epochs after the first (every process's
images, measured by rank 0); the wall time includes starting the processes.

    python benchmarks/bench_ddp.py                        # CPU: world sizes 1 and 2
    python benchmarks/bench_ddp.py --device cuda --worlds 1,2,4,8 --image-size 224
    python benchmarks/bench_ddp.py --smoke                # seconds: tiny sizes

On CPU the processes share the machine's cores (torchrun gives each cores / N threads), so a
2-core machine shows the cost of the communication more than any gain; on GPUs each process has
its own device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def make_dataset(root: Path, classes: int, per_class: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, 3)
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def run_world(world: int, args: argparse.Namespace, data: Path, out: Path) -> dict[str, Any]:
    run = out / f"world-{world}"
    command = [sys.executable, "-m", "studio", "train", "--data", str(data),
               "--backbone", args.backbone, "--weights", "none",
               "--image-size", str(args.image_size), "--augment", "none",
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--device", args.device, "--precision", args.precision, "--workers", "0",
               "--feature-cache", "off", "--val-fraction", "0.1", "--out", str(run),
               "--nproc-per-node", str(world)]
    began = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"world size {world} failed:\n{done.stderr[-2000:]}")
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r.get("event") == "epoch"]
    later = epochs[1:] or epochs
    speed = sum(r["images_per_second"] for r in later) / len(later)
    return {"world_size": world, "images_per_second": speed, "wall_seconds": wall,
            "val_acc": epochs[-1]["val_acc"], "val_images": epochs[-1]["val_images"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", default="1,2", help="world sizes, comma-separated")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=480, help="training images in all")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a quick check")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.images, args.epochs, args.batch_size = 16, 48, 2, 4
    worlds = [int(w) for w in args.worlds.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as scratch:
        work = Path(scratch)
        data = make_dataset(work / "data", 4, max(2, args.images // 4), args.image_size)
        print(f"{args.backbone} @ {args.image_size} px, batch {args.batch_size} per process, "
              f"{args.epochs} epochs, {args.device} {args.precision}, "
              f"{os.cpu_count()} CPU cores")
        rows = []
        for world in worlds:
            row = run_world(world, args, data, work)
            rows.append(row)
            base = rows[0]["images_per_second"]
            print(f"world {world}: {row['images_per_second']:8.1f} img/s "
                  f"({row['images_per_second'] / base:.2f}× world {worlds[0]}), wall "
                  f"{row['wall_seconds']:.1f} s, val acc {row['val_acc']:.3f} on "
                  f"{row['val_images']} images", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
