"""How long listing the run history takes: N run folders made from one real run, then listed.

    python benchmarks/bench_runs.py            # 500 runs
    python benchmarks/bench_runs.py --runs 2000

One tiny run is trained (mobilenet_v3_small, 32 px, 2 epochs on a generated dataset), then
copied N times with its small files (config.toml, metrics.jsonl, run.json, labels.json) and its
checkpoints (hard links: listing reads their sizes, never their contents). The listing is timed
cold-ish (first call) and warm (the median of three), in this process and as `studio runs
--json` in a fresh one (which includes Python's start-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args(argv)
    from conftest import write_tiny_dataset

    from studio.cli import main as studio

    with tempfile.TemporaryDirectory(prefix="bench-runs-") as scratch:
        work = Path(scratch)
        data = write_tiny_dataset(work / "data", per_class=4)
        seed_run = work / "seed-run"
        code = studio(["train", "--data", str(data), "--out", str(seed_run), "--backbone",
                       "mobilenet_v3_small", "--weights", "none", "--image-size", "32",
                       "--epochs", "2", "--device", "cpu", "--workers", "0"])
        if code:
            raise SystemExit("the seed run failed")
        root = work / "runs"
        root.mkdir()
        for index in range(args.runs):
            target = root / f"run-{index:04d}"
            (target / "checkpoints").mkdir(parents=True)
            for name in ("config.toml", "metrics.jsonl", "run.json", "labels.json",
                         "dataset_files.json.gz"):
                (target / name).write_bytes((seed_run / name).read_bytes())
            for name in ("last.pt", "best.pt"):
                os.link(seed_run / "checkpoints" / name, target / "checkpoints" / name)

        from studio.engine.history import list_runs

        began = time.perf_counter()
        listed = list_runs(root)
        first = time.perf_counter() - began
        warm = []
        for _ in range(3):
            began = time.perf_counter()
            list_runs(root)
            warm.append(time.perf_counter() - began)
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "studio", "runs", str(root), "--json"],
                              capture_output=True, text=True, cwd=ROOT, check=True)
        command = time.perf_counter() - began
    assert len(listed) == args.runs and len(done.stdout.splitlines()) == args.runs
    print(f"{args.runs} runs: list_runs {first:.3f} s first, {statistics.median(warm):.3f} s "
          f"warm ({1000 * statistics.median(warm) / args.runs:.2f} ms a run); "
          f"`studio runs --json` in a fresh process {command:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
