"""Does every torchvision classifier export to ONNX and verify? (a script, not a test)

Builds each model of the zoo for 3 classes with weights "none" at its smallest input size,
exports it with ``studio.engine.export.export_model_onnx`` (the dynamo exporter first, the
TorchScript-based one when that fails or mismatches) and verifies it under onnxruntime against
PyTorch on a random batch. Two things make that comparison mean something on untrained weights:
the final layer is re-initialised at unit scale (std 1/sqrt(fan_in)), since Studio's own head
starts near zero; and BatchNorm statistics are settled on a few random batches, since with the
initial running statistics the logits of MobileNet, EfficientNet, MNASNet … are the same for
every input (and Inception v3's reach 1e7). Each model runs in a fresh process with a time limit,
so a crash or a hang costs one row.

    python benchmarks/bench_export_zoo.py [NAME_OR_FAMILY ...] [--timeout 900] [--threads N]
        [--opset N] [--exporters dynamo,torchscript] [--json FILE]

Prints one row per model: exporter used, export seconds (export + verification), file size,
max |Δlogit|, verified; models that cannot export are listed at the end with the reason.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def input_size(name: str) -> int:
    """The smallest size the model is built and run at (ViTs: a multiple of their patch)."""
    from studio.engine.backbones import backbone_info

    info = backbone_info(name)
    if info.family == "vision_transformer":
        patch = int(name.rsplit("_", 1)[-1])
        return patch * math.ceil(32 / patch)
    return max(32, info.min_size)


def build(name: str, classes: int = 3) -> tuple[Any, int]:
    """``name`` built the way Studio builds it, with a unit-scale final layer and settled
    BatchNorm statistics, in eval mode."""
    import torch

    from studio.engine.backbones import build_model
    from studio.engine.config import ModelConfig

    size = input_size(name)
    torch.manual_seed(0)  # the same weights on every run of the benchmark
    built = build_model(ModelConfig(backbone=name, weights="none"), classes, size)
    model = built.model
    head = model.get_submodule(built.head)
    torch.nn.init.normal_(head.weight, std=head.weight[0].numel() ** -0.5)
    torch.nn.init.normal_(head.bias, std=0.1)
    settle_batchnorm(model, size)
    return model.eval(), size


def settle_batchnorm(model: Any, size: int, batches: int = 2) -> None:
    """Running statistics from a few random batches (cumulative average), as training would."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    generator = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8 if size < 100 else 2, 3, size, size, generator=generator))
    model.eval()


def one(name: str, opset: int | None, exporters: list[str]) -> dict[str, Any]:
    """Export one model; the row of the table as a dict."""
    import torch

    from studio.engine.export import ExportError, export_model_onnx

    started = time.monotonic()
    model, size = build(name)
    built_s = time.monotonic() - started
    params = sum(p.numel() for p in model.parameters())
    row: dict[str, Any] = {"model": name, "params_m": params / 1e6, "input": size,
                           "build_s": built_s}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        started = time.monotonic()
        try:
            result = export_model_onnx(model, path, size, opset=opset, exporters=exporters)
        except ExportError as error:
            failed = error.result
            row |= {"verified": False, "seconds": time.monotonic() - started,
                    "reason": str(error),
                    "attempts": failed.attempts if failed is not None else []}
            if failed is not None and failed.parity is not None:
                row["max_abs_diff"] = failed.parity.max_abs_diff
            return row
        with torch.no_grad():
            scale = float(model(torch.randn(2, 3, size, size)).abs().max())
        row |= {"verified": result.verified, "seconds": time.monotonic() - started,
                "exporter": result.exporter, "opset": result.opset,
                "file_mb": result.size_bytes / 1e6, "files": [f.name for f in result.files],
                "max_abs_diff": result.parity.max_abs_diff if result.parity else None,
                "logit_scale": scale, "attempts": result.attempts,
                "tolerance_used": result.parity.tolerance_used if result.parity else None,
                "judged_against": result.parity.reference if result.parity else None,
                "pytorch_fp32_error": result.parity.pytorch_fp32_error if result.parity
                else None}
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="model names or families (default: all)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per model")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--opset", type=int)
    parser.add_argument("--exporters", default="dynamo,torchscript")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON lines")
    parser.add_argument("--one", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args()
    exporters = args.exporters.split(",")

    if args.one:  # the child process: one model, one JSON line
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print("ROW " + json.dumps(one(args.one, args.opset, exporters)), flush=True)
        return 0

    from studio.engine.backbones import list_backbones

    infos = [i for i in list_backbones()
             if not args.only or i.name in args.only or i.family in args.only]
    infos.sort(key=lambda i: i.params)  # small first: the table fills in quickly
    rows = []
    print(f"{'model':<20} {'params':>7} {'in':>4} {'exporter':<11} {'export s':>8} "
          f"{'file MB':>8} {'max diff':>9} {'scale':>7} verified", flush=True)
    for info in infos:
        command = [sys.executable, __file__, "--one", info.name, "--exporters", args.exporters]
        if args.opset:
            command += ["--opset", str(args.opset)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        started = time.monotonic()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("ROW ")]
            if lines:
                row = json.loads(lines[-1][4:])
            else:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                row = {"model": info.name, "verified": False,
                       "reason": f"the process ended with code {done.returncode}: {tail}"}
        except subprocess.TimeoutExpired:
            row = {"model": info.name, "verified": False,
                   "reason": f"no result within {args.timeout:.0f} s"}
        row["wall_s"] = time.monotonic() - started
        row["family"] = info.family
        rows.append(row)
        print(format_row(row), flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    failed = [r for r in rows if not r.get("verified")]
    fallbacks = [r for r in rows if r.get("verified") and r.get("exporter") != exporters[0]]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} models exported and verified.")
    by_exporter: dict[str, list[str]] = {}
    for row in rows:
        if row.get("verified"):
            by_exporter.setdefault(row["exporter"], []).append(row["model"])
    for exporter, names in by_exporter.items():
        print(f"  {exporter}: {len(names)}")
    if fallbacks:
        print("\nFell back from the first exporter:")
        for row in fallbacks:
            first = row["attempts"][0]["outcome"] if row.get("attempts") else "?"
            print(f"  {row['model']}: {first}")
    exact = [r for r in rows if r.get("judged_against") == "fp64"]
    if exact:
        print("\nVerified against float64 (PyTorch's own fp32 result is beyond the tolerance):")
        for row in exact:
            print(f"  {row['model']}: PyTorch fp32 is {row['pytorch_fp32_error']:.2g} from "
                  f"float64")
    if failed:
        print("\nCannot export:")
        for row in failed:
            print(f"  {row['model']}: {row.get('reason')}")
    return 0 if not failed else 1


def format_row(row: dict[str, Any]) -> str:
    def number(key: str, spec: str, width: int) -> str:
        value = row.get(key)
        return f"{value:{spec}}".rjust(width) if isinstance(value, int | float) else \
            "-".rjust(width)

    return (f"{row['model']:<20} {number('params_m', '.1f', 6)}M {number('input', 'd', 4)} "
            f"{row.get('exporter') or '-':<11} {number('seconds', '.1f', 8)} "
            f"{number('file_mb', '.1f', 8)} {number('max_abs_diff', '.1e', 9)} "
            f"{number('logit_scale', '.2g', 7)} {'yes' if row.get('verified') else 'NO'}"
            f"{' (vs fp64)' if row.get('judged_against') == 'fp64' else ''}")


if __name__ == "__main__":
    raise SystemExit(main())
