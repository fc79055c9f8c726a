"""What the live learning view costs a training step: resnet18, full fine-tuning, this machine.

The Layers tree's Grad norm and Update / weight columns come from a :class:`LearningProbe` on
the trainer's :class:`Stepper`: on a sampled step (at most every 0.5 s) it takes the gradient
norms, copies the trainable weights before ``optimizer.step()`` and takes the norms of the
change after it, with one host sync; every other step costs one clock read. This script runs
the trainer's own step (forward, backward, ``Stepper.step``) on random images in rounds of three
modes, taking turns step by step so that a busy machine slows all of them alike:

- ``off``: no probe (a headless run: nobody listens, nothing is sampled);
- ``live``: the probe as the app runs it (a sample every 0.5 s, or less often if a sample
  would take more than 3 % of the time between samples);
- ``every``: a sample on every step, which gives the cost of one sampled step.

and prints median milliseconds per step of each, the probe's own time per sampled step (timed
inside it), and the average overhead of ``live`` over ``off`` (target: a few %).

    python benchmarks/bench_learning_view.py               # 64 px, batch 16, ~2 minutes on 2 cores
    python benchmarks/bench_learning_view.py --smoke       # 32 px, batch 4: seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40, help="steps per mode")
    parser.add_argument("--smoke", action="store_true", help="32 px, batch 4, 4 steps per mode")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.batch, args.steps = 32, 4, 4

    import torch
    import torchvision
    from torch import nn

    from studio.engine.config import OptimConfig
    from studio.engine.learning import OVERHEAD_BUDGET, SAMPLE_INTERVAL, LearningProbe
    from studio.engine.optim import Schedule, Stepper, make_optimizer
    from studio.engine.record import cpu_name

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    groups = [{"params": [params[n] for n in names], "param_names": names, "name": "default",
               "lr": 1e-3, "weight_decay": 1e-4}]
    optimizer = make_optimizer(OptimConfig(optimizer="adamw"), groups)
    stepper = Stepper(optimizer, Schedule(OptimConfig(schedule="none"), 100, 1), 0.0, False)
    images = torch.randn(args.batch, 3, args.size, args.size)
    targets = torch.randint(0, 10, (args.batch,))
    model.train()

    samples: list[Any] = []

    class TimedProbe(LearningProbe):
        """Also keeps the seconds spent in its hooks (not the optimizer step between them)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.inside: list[float] = []

        def before_step(self, optimizer: torch.optim.Optimizer) -> None:
            began = time.perf_counter()
            super().before_step(optimizer)
            self._before_seconds = time.perf_counter() - began

        def after_step(self, optimizer: torch.optim.Optimizer, global_step: int) -> None:
            began = time.perf_counter()
            super().after_step(optimizer, global_step)
            self.inside.append(self._before_seconds + time.perf_counter() - began)

    # the live probe's clock runs only during live steps, so it samples as in a run of its own
    live_time: list[Any] = [0.0, None]  # seconds of live steps so far, start of the current one

    def live_clock() -> float:
        began = live_time[1]
        return live_time[0] + (time.perf_counter() - began if began is not None else 0.0)

    probes = {"off": None, "live": TimedProbe(samples.append, clock=live_clock),
              "every": TimedProbe(samples.append, interval=0.0, budget=math.inf)}
    step_ms: dict[str, list[float]] = {mode: [] for mode in probes}
    sampled = {mode: 0 for mode in probes}
    global_step = 0

    def one_step() -> None:
        nonlocal global_step
        loss = nn.functional.cross_entropy(model(images), targets)
        stepper.backward(loss)
        stepper.step(groups[0]["params"], global_step)
        global_step += 1

    for _ in range(5 if not args.smoke else 2):  # warm-up: allocator, Adam state, caches
        one_step()
    for _ in range(args.steps):  # the modes take turns step by step: a busy machine's
        for mode, probe in probes.items():  # slow spells fall on all of them alike
            stepper.observer = probe
            before = len(samples)
            began = time.perf_counter()
            if mode == "live":
                live_time[1] = began
            one_step()
            seconds = time.perf_counter() - began
            step_ms[mode].append(1000 * seconds)
            if mode == "live":
                live_time[0] += seconds
                live_time[1] = None
            sampled[mode] += len(samples) - before
    inside = probes["every"].inside  # type: ignore[union-attr]
    live_share = sum(probes["live"].inside) / live_time[0]  # type: ignore[union-attr]
    median = {mode: statistics.median(values) for mode, values in step_ms.items()}
    mean = {mode: statistics.fmean(values) for mode, values in step_ms.items()}
    probe_ms = 1000 * statistics.median(inside) if inside else float("nan")
    # averaged over a run: one sample per interval of wall time (or per step if slower), the
    # interval stretched so that sampling takes at most OVERHEAD_BUDGET of it
    interval = max(SAMPLE_INTERVAL, probe_ms / 1000 / OVERHEAD_BUDGET)
    per_second = min(1000 / median["off"], 1 / interval)
    expected = probe_ms * per_second / 1000
    print(f"resnet18 full fine-tuning, AdamW, {args.size} px, batch {args.batch}, "
          f"{len(names)} tensors / {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
          f"parameters; {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
          f"threads, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
          f"Python {platform.python_version()}")
    print(f"{'mode':<8}{'median ms/step':>16}{'mean ms/step':>14}{'sampled steps':>15}")
    for mode in probes:
        print(f"{mode:<8}{median[mode]:16.1f}{mean[mode]:14.1f}"
              f"{sampled[mode]:>9} / {len(step_ms[mode])}")
    print(f"\none sampled step: +{median['every'] - median['off']:.1f} ms per step measured "
          f"(every − off); the probe's own time {probe_ms:.1f} ms "
          f"({100 * probe_ms / median['off']:.1f} % of a step)")
    print(f"live − off: {100 * (median['live'] / median['off'] - 1):+.1f} % (median), "
          f"{100 * (mean['live'] / mean['off'] - 1):+.1f} % (mean); expected from the probe's "
          f"time at {per_second:.1f} samples/s: {100 * expected:.1f} % of wall time; "
          f"measured inside the live probe: {100 * live_share:.1f} % of the live steps' time "
          f"(target: a few %)")
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu_name(), "size": args.size, "batch": args.batch,
            "median_ms": median, "mean_ms": mean, "sampled": sampled,
            "probe_ms": probe_ms,
            "expected_overhead": expected, "live_share": live_share}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
