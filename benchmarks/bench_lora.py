"""LoRA against full fine-tuning: trainable parameters, peak memory and training images per
second of the same backbone, batch and image size.

    python benchmarks/bench_lora.py                        # CPU, vit_b_16 at 224 px, batch 8
    python benchmarks/bench_lora.py --device cuda --batch-size 64
    python benchmarks/bench_lora.py --smoke                # seconds: tiny sizes

Each mode runs in a fresh process, so the peak memory is its own: on CUDA the allocator's peak
(``torch.cuda.max_memory_allocated``), on the CPU the process's peak resident set, less what
the process held before the model was built. Modes: ``full`` (every parameter trains),
``head`` (only the head), ``lora-attention`` and ``lora-linear`` (rank 8 adapters through
studio.engine.lora on the attention / every linear layer, the rest frozen, the head training).
AdamW, fp32 on the CPU, bf16 autocast on CUDA, random images.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("full", "head", "lora-attention", "lora-linear")


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One mode in this process: build, freeze or adapt, train ``--steps`` timed steps."""
    sys.path.insert(0, str(ROOT))
    import torch

    from studio.engine.backbones import build_model
    from studio.engine.config import LoraSpec, ModelConfig
    from studio.engine.lora import attach, preset_targets

    device = torch.device(args.device)
    if args.mode.startswith("lora"):
        import peft  # noqa: F401 - its import (transformers) is not the adapters' memory
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    built = build_model(ModelConfig(backbone=args.backbone, weights="none"), 10,
                        args.image_size)
    model, head = built.model, built.head
    if args.mode != "full":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(head + "."))
    adapters = 0
    if args.mode.startswith("lora"):
        preset = args.mode.split("-", 1)[1]
        targets = preset_targets(model, head, preset, args.image_size)
        adapters = attach(model, LoraSpec(targets=targets, rank=args.rank,
                                          alpha=2.0 * args.rank), head,
                          args.image_size).adapter_params
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: the optimizer's state exists from here on
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - began
    if device.type == "cuda":
        peak = float(torch.cuda.max_memory_allocated(device))
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"trainable": sum(p.numel() for p in trainable), "adapters": adapters,
            "total": sum(p.numel() for p in model.parameters()), "peak_bytes": peak,
            "images_per_second": args.steps * args.batch_size / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_b_16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.image_size, args.steps = 2, 32, 1
    if args.mode:
        print(json.dumps(measure(args)))
        return 0
    sys.path.insert(0, str(ROOT))
    from studio.engine.record import cpu_name

    where = args.device if args.device != "cpu" else f"cpu ({cpu_name()})"
    print(f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, AdamW, "
          f"{args.steps} timed steps, on {where}")
    print(f"{'mode':<16} {'trainable':>12} {'share':>7} {'peak memory':>12} {'img/s':>8}")
    for mode in args.modes:
        child = [sys.executable, __file__, "--mode", mode, "--backbone", args.backbone,
                 "--device", args.device, "--batch-size", str(args.batch_size),
                 "--image-size", str(args.image_size), "--steps", str(args.steps),
                 "--rank", str(args.rank)]
        done = subprocess.run(child, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{mode:<16} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        share = 100 * figures["trainable"] / figures["total"]
        print(f"{mode:<16} {figures['trainable'] / 1e6:>11.2f}M {share:>6.2f}% "
              f"{figures['peak_bytes'] / 2**20:>10.0f} MB {figures['images_per_second']:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
