"""What a head-only run costs beyond the work itself: each part in a fresh process, as a user runs.

The floor of a head-only run is importing torch and torchvision, then one frozen forward per
image (the feature cache); training the head on cached features is nearly free. This script
measures, each in its own interpreter:

- ``import``: ``import torch, torchvision``;
- ``floor``: import, build resnet18 from a weights file, decode every image, one forward each;
- ``studio``: ``python -m studio train`` head-only for 10 epochs, with a breakdown read from its
  run folder (feature cache, epochs, the rest);
- ``tutorial``: the PyTorch fine-tuning tutorial loop on the same data for the same epochs.

and prints wall seconds and peak resident memory (the kernel's high-water mark), the
ratio of studio's wall time to (import + frozen forward), and studio's peak memory against the
tutorial loop's. Targets (issue 12): ratio ≤ 1.2, peak memory at or below the tutorial's.

    python benchmarks/bench_overhead.py              # resnet18 @ 224, 180 images, 10 epochs
    python benchmarks/bench_overhead.py --smoke      # 32 px, a few images: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

FLOOR = """
import sys
import torch, torchvision
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms
from torchvision.models import resnet18
from pathlib import Path
data, weights, size, classes = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = resnet18(weights=None)
model.fc = torch.nn.Linear(model.fc.in_features, classes)
model.load_state_dict(load_file(weights))
model.fc = torch.nn.Identity()
model.eval()
tf = transforms.Compose([transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size),
                         transforms.ToTensor(),
                         transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
paths = sorted(data.rglob("*.jpg"))
with torch.no_grad():
    for start in range(0, len(paths), 32):
        batch = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[start:start + 32]])
        model(batch)
"""

TUTORIAL = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[5])
import bench_train
figures = bench_train.reference_loop(Path(sys.argv[1]), Path(sys.argv[2]), "head",
                                     int(sys.argv[3]), 32, int(sys.argv[4]), 0, False)
print(figures.val_accuracy)
"""


# A small process starts each measured one: a child's high-water mark starts from its parent's
# resident size at fork, so measured from this (large) process every child would read the same.
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as handle:
    handle.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def measure(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, the peak resident memory in MB (the kernel's high-water mark of the
    process, or of a DataLoader worker it started if that was larger), and its stdout."""
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch) / "peak"
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", LAUNCHER, str(peak_file), *command],
                              capture_output=True, text=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - began
        if done.returncode:
            raise SystemExit(f"{' '.join(command[:4])} … failed:\n{done.stderr[-3000:]}")
        return wall, int(peak_file.read_text()) / 1024, done.stdout


def run_one(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    return measure(command, env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=180, help="train + val images")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="studio's precision (auto: what a user gets; fp32: as on a CPU "
                             "without bf16, like the tutorial loop)")
    parser.add_argument("--smoke", action="store_true", help="32 px, 24 images, 2 epochs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.images, args.classes, args.epochs = 32, 24, 3, 2
    import bench_train

    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as scratch:
        work = Path(scratch)
        per_class = args.images // args.classes
        train = max(2, round(per_class * 0.8))
        data = bench_train.make_dataset(work / "data", args.classes, train, per_class - train,
                                        max(args.size + args.size // 7, 40))
        weights = bench_train.initial_weights(work / "initial.safetensors", args.classes, data,
                                              args.size)
        env = {**os.environ, "STUDIO_CACHE_DIR": str(work / "cache"),
               "STUDIO_LOG_FILE": str(work / "studio.log")}
        python = sys.executable
        imports = min(run_one([python, "-c", "import torch, torchvision"], env)[0]
                      for _ in range(2))
        floor_wall, floor_peak, floor_out = run_one(
            [python, "-c", FLOOR, str(data), str(weights), str(args.size), str(args.classes)], env)
        forward = floor_wall - imports
        run = work / "run"
        studio_wall, studio_peak, _ = run_one(
            [python, "-m", "studio", "train", "--data", str(data), "--out", str(run),
             "--backbone", "resnet18", "--weights", str(weights), "--image-size", str(args.size),
             "--freeze-preset", "head_only", "--augment", "none", "--epochs", str(args.epochs),
             "--batch-size", "32", "--optimizer", "sgd", "--schedule", "none",
             "--base-lr", "0.01", "--precision", args.precision], env)
        tutorial_wall, tutorial_peak, _ = run_one(
            [python, "-c", TUTORIAL, str(data), str(weights), str(args.epochs), str(args.size),
             str(ROOT / "benchmarks")], env)
        records = [json.loads(line) for line in
                   (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    cache = sum(r.get("seconds", 0.0) for r in records
                if r.get("event") == "cache" and r.get("kind") == "features"
                and r.get("state") == "ready")
    epochs = sum(r.get("seconds", 0.0) for r in records if r.get("event") == "epoch")
    floor = floor_wall  # import + build + decode + one frozen forward per image
    from studio.engine.record import cpu_name

    cpu = cpu_name()
    print(f"resnet18 @ {args.size} px, {args.images} images, head only, {args.epochs} epochs, "
          f"studio precision {args.precision}; "
          f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}")
    print(f"{'':<34}{'wall s':>8}{'peak MB':>9}")
    print(f"{'import torch, torchvision':<34}{imports:8.1f}")
    print(f"{'floor: import + frozen forward':<34}{floor_wall:8.1f}{floor_peak:9.0f}"
          f"   (forward {forward:.1f} s)")
    print(f"{'studio train (head only)':<34}{studio_wall:8.1f}{studio_peak:9.0f}")
    print(f"{'  feature cache (frozen forward)':<34}{cache:8.1f}")
    print(f"{'  epochs on cached features':<34}{epochs:8.1f}")
    print(f"{'  imports, setup, saving, exit':<34}{studio_wall - epochs - cache:8.1f}")
    print(f"{'tutorial loop':<34}{tutorial_wall:8.1f}{tutorial_peak:9.0f}")
    print(f"\nstudio / (import + forward) = {studio_wall / floor:.2f} (target ≤ 1.2); "
          f"peak memory {studio_peak:.0f} MB vs the tutorial's {tutorial_peak:.0f} MB "
          f"(target ≤)")
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu, "imports": imports, "forward": forward, "floor_wall": floor_wall,
            "studio_wall": studio_wall, "studio_peak_mb": studio_peak, "cache": cache,
            "epochs": epochs, "tutorial_wall": tutorial_wall, "tutorial_peak_mb": tutorial_peak,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
