"""How long the dataset doctor takes, and how much memory, on many small images.

    python benchmarks/bench_doctor.py               # 10,000 images of 32×32 pixels
    python benchmarks/bench_doctor.py --images 2000 --size 64

Writes N smooth random images (8×8 colour grids blown up; half PNG, half JPEG) into 10 class
folders, then plants 1% exact copies (some across classes: conflicts), 1% near copies (resized
and recompressed) and lets the seeded train/val split make leaks. Times the scan (every image
decoded once) and the doctor's own pass (content hash and pHash of every file, the band index,
grouping) separately, checks that every planted pair is found, and prints peak resident memory
(ru_maxrss of this process, which also holds the generator's work).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def smooth(seed: int, size: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)


def write_folder(root: Path, images: int, size: int, classes: int = 10
                 ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The folder, and the planted (exact, near) pairs as relative paths."""
    rng = random.Random(0)
    names = []
    for i in range(images):
        cls = f"class{i % classes:02d}"
        (root / cls).mkdir(parents=True, exist_ok=True)
        name = f"{cls}/img{i:05d}." + ("png" if i % 2 else "jpg")
        smooth(i, size).save(root / name, quality=92)
        names.append(name)
    exact, near = [], []
    for k, source in enumerate(rng.sample(names, images // 100)):
        cls = source.split("/")[0] if k % 2 else f"class{rng.randrange(classes):02d}"
        target = f"{cls}/copy{k:04d}{Path(source).suffix}"
        shutil.copyfile(root / source, root / target)
        exact.append((source, target))
    for k, i in enumerate(rng.sample(range(images), images // 100)):
        source = names[i]
        target = f"{source.split('/')[0]}/near{k:04d}.jpg"
        smooth(i, size).resize((size * 3 // 4, size * 3 // 4)).save(root / target, quality=85)
        near.append((source, target))
    return exact, near


def peak_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=32, help="pixels on a side")
    args = parser.parse_args(argv)
    from studio.engine.data import scan_folder
    from studio.engine.doctor import diagnose

    with tempfile.TemporaryDirectory(prefix="bench-doctor-") as scratch:
        root = Path(scratch) / "data"
        started = time.perf_counter()
        exact, near = write_folder(root, args.images, args.size)
        made = time.perf_counter() - started
        before = peak_mib()
        started = time.perf_counter()
        scan = scan_folder(root)
        scanned = time.perf_counter() - started
        started = time.perf_counter()
        report = diagnose(root, scan=scan)
        checked = time.perf_counter() - started
        groups = {frozenset(g) for g in report.duplicates}
        near_groups = [set(g) for g in report.near_duplicates]
        found_exact = sum(1 for a, b in exact if any({a, b} <= g for g in groups))
        found_near = sum(1 for a, b in near if any({a, b} <= g for g in near_groups))
        total = report.images
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores), Python "
          f"{platform.python_version()}")
    print(f"{total:,} images of {args.size}×{args.size} (written in {made:.1f} s)")
    print(f"scan (decode every image):        {scanned:6.2f} s")
    print(f"doctor (hash, pHash, index, groups): {checked:6.2f} s  "
          f"({total / checked:,.0f} images/s)")
    print(f"found {found_exact}/{len(exact)} planted exact copies, {found_near}/{len(near)} "
          f"near copies; {len(report.near_duplicates)} near groups, {len(report.leaks)} leaks, "
          f"{len(report.conflicts)} conflicts")
    print(f"peak resident memory: {peak_mib():.0f} MiB (before the scan: {before:.0f} MiB)")
    return 0 if found_exact == len(exact) and found_near == len(near) else 1


if __name__ == "__main__":
    raise SystemExit(main())
