"""Several processes for one run: `studio train --nproc-per-node N` starts PyTorch's own launcher,
torchrun (``torch.distributed.run``), on ``python -m studio`` with the same arguments.

Each process it starts sees ``WORLD_SIZE`` in its environment and joins the run as one rank (see
:class:`studio.engine.runtime.Placement`); the launcher itself only watches. Before anything
starts, combinations that cannot work are refused with a sentence; afterwards a process that
dies is named in one sentence, and a stop (Ctrl-C, SIGTERM) is handed to every process, which
all finish the batch they are on and leave a resumable run.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from studio.cli.common import EXIT_ERROR, EXIT_OK

CANCELLED = 130  # a process's exit code when its fit was stopped


def add_scale_out_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "scale out (one process per GPU, or CPU processes, through torchrun)")
    group.add_argument("--nproc-per-node", type=int, metavar="N",
                       help="processes on this machine (train.processes); above 1 the run is "
                            "launched through torchrun as DistributedDataParallel, with "
                            "--batch-size per process")
    group.add_argument("--nnodes", type=int, default=1, metavar="M",
                       help="machines taking part (default 1); run the same command on each")
    group.add_argument("--node-rank", type=int, default=0, metavar="R",
                       help="this machine's number, 0 … M-1; machine 0 hosts the rendezvous")
    group.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                       help="the address of machine 0 where the machines meet (c10d "
                            "rendezvous); needed with --nnodes above 1")
    group.add_argument("--dist-timeout", type=float, default=600.0, metavar="SECONDS",
                       help="how long a process waits for the others before giving up "
                            "(default 600)")
    group.add_argument("--backend", choices=["auto", "nccl", "gloo"], default="auto",
                       help="how processes talk: nccl between GPUs, gloo on CPU (auto)")
    group.add_argument("--sync-bn", action="store_true",
                       help="BatchNorm statistics over all processes (CUDA only)")
    group.add_argument("--json-events", action="store_true",
                       help="also print every training event as a JSON line on stdout (rank 0)")


def wants_launch(args: argparse.Namespace, processes: int) -> bool:
    from studio.engine.runtime import launched_by_torchrun

    return not launched_by_torchrun() and (processes > 1 or args.nnodes > 1)


def preflight(config: Any, args: argparse.Namespace, processes: int) -> None:
    """Refuse, before any process starts, what cannot work."""
    from studio.engine.config import ConfigError
    from studio.engine.errors import StudioError
    from studio.engine.runs import RunPaths
    from studio.engine.runtime import check_gpu_count, pick_device

    if processes < 1:
        raise ConfigError(f"--nproc-per-node must be at least 1; got {processes}")
    if args.nnodes < 1:
        raise ConfigError(f"--nnodes must be at least 1; got {args.nnodes}")
    if not 0 <= args.node_rank < args.nnodes:
        raise ConfigError(f"--node-rank must be between 0 and {args.nnodes - 1} for "
                          f"--nnodes {args.nnodes}; got {args.node_rank}")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise ConfigError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT, the address of "
                          "machine 0 where the machines meet")
    if args.rdzv_endpoint and not _endpoint_ok(args.rdzv_endpoint):
        raise ConfigError(f"--rdzv-endpoint must be HOST:PORT (for example 10.0.0.1:29400); "
                          f"got {args.rdzv_endpoint!r}")
    if args.dist_timeout <= 0:
        raise ConfigError(f"--dist-timeout must be positive; got {args.dist_timeout}")
    device = pick_device(config.train.device)
    if device.type == "mps":
        raise ConfigError("several processes run on CUDA GPUs or on the CPU, not on Apple MPS; "
                          "use --device cpu or a single process")
    if args.backend == "nccl" and device.type != "cuda":
        raise ConfigError("the nccl backend needs CUDA GPUs, and this run is on the CPU; use "
                          "--backend gloo (or auto)")
    if device.type == "cuda":
        check_gpu_count(processes)
    if config.train.sync_bn and device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA GPUs (PyTorch synchronises BatchNorm only "
                          "there); leave it off on the CPU")
    if not args.resume:
        if not Path(config.data.root).is_dir():
            raise StudioError(f"dataset folder {config.data.root} does not exist; pass --data "
                              f"DIR (on every machine, at the same path)")
        if args.out and RunPaths(args.out).holds_a_run():
            raise StudioError(f"{args.out} already holds a run; resume it with --resume "
                              f"{args.out} or choose another --out folder")
    elif not RunPaths(args.resume).config.is_file():
        raise StudioError(f"{args.resume} is not a run folder (it has no config.toml); resume "
                          f"the folder that `studio train --out` wrote")


def _endpoint_ok(endpoint: str) -> bool:
    host, sep, port = endpoint.rpartition(":")
    return bool(sep and host and port.isdigit())


def launch(argv: list[str], args: argparse.Namespace, processes: int) -> int:
    """Run torchrun on ``python -m studio ARGV`` and turn how it ended into an exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if not args.verbose:  # torchrun's agent logs starts, stops and failures; we say them once
        logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    cores = os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // processes)))
    options = ["--nproc-per-node", str(processes), "--max-restarts", "0"]
    if args.nnodes == 1 and not args.rdzv_endpoint:
        options.append("--standalone")
    else:
        options += ["--nnodes", str(args.nnodes), "--node-rank", str(args.node_rank),
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint,
                    "--rdzv-id", "finetune-studio",
                    "--rdzv-conf", f"is_host={1 if args.node_rank == 0 else 0}"]
    options += ["--module", "studio", *argv]
    print(f"launching {processes} process{'es' if processes > 1 else ''} on {socket.gethostname()}"
          + (f" (machine {args.node_rank} of {args.nnodes})" if args.nnodes > 1 else ""),
          file=sys.stderr, flush=True)
    try:
        run(get_args_parser().parse_args(options))
    except ChildFailedError as failure:
        return report_failure(failure.failures)
    except SignalException:
        print("stopped: every process finished its batch; the run resumes from its last "
              "completed epoch with --resume", file=sys.stderr)
        return CANCELLED
    return EXIT_OK


def report_failure(failures: dict[int, Any]) -> int:
    """One sentence naming the process that failed first (the others were stopped by it),
    unless it ended with an error it has already told (exit code 1)."""
    if all(f.exitcode == CANCELLED for f in failures.values()):
        return CANCELLED
    rank, first = min(failures.items(), key=lambda item: item[1].timestamp)
    if first.exitcode == EXIT_ERROR:  # a sentence of its own is above; the others followed it
        return EXIT_ERROR
    if first.exitcode < 0:
        how = f"was killed by {first.signal_name()}"
    else:
        how = f"exited with code {first.exitcode}"
    print(f"error: rank {rank} (process {first.pid} on {socket.gethostname()}) {how}; the "
          f"other processes were stopped, and the run folder keeps its last completed epoch "
          f"(continue it with --resume RUN_DIR)", file=sys.stderr)
    return EXIT_ERROR
