"""Where and how a run computes: device, precision, autocast, seeding, loader workers, and the
:class:`Placement` of this process among the processes of a run.

A single process is the world of size 1, so the trainer has one code path: it asks the
placement to wrap the model, shard the data, reduce the metrics and agree on stopping, and at
world size 1 each of those is the identity. Under ``torchrun`` (``WORLD_SIZE`` > 1 in the
environment) :meth:`Placement.from_environment` joins the process group: NCCL with one GPU per
process on CUDA, gloo on CPU, with a timeout on every collective so that a rank that dies ends
the others instead of hanging them.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import multiprocessing
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

from studio.engine.config import ConfigError
from studio.engine.errors import StudioError

DEFAULT_TIMEOUT = 600.0  # seconds a collective may wait for the other ranks


# ---------------------------------------------------------------------------------------------
# Device and precision


def pick_device(spec: str) -> torch.device:
    """``auto`` → CUDA, then Apple MPS, then CPU; an explicit device must exist."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; "
                          "use device 'auto' or 'cpu'")
    if spec == "mps" and not _mps_available():
        raise ConfigError("device 'mps' was asked for but Apple MPS is not available; "
                          "use device 'auto' or 'cpu'")
    return torch.device(spec)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def pick_precision(spec: str, device: torch.device) -> str:
    if spec == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and cpu_supports_bf16():
            return "bf16"
        return "fp32"
    if spec == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on this device")
    return spec


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type


def autocast_for(device: torch.device, precision: str) -> Any:
    """The autocast context of a precision: off for fp32, bf16 or fp16 otherwise."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Seeding and loader workers


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Set both ways: in a long-lived GUI process one run must not inherit the previous one's.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def auto_workers() -> int:
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def loader_workers(workers: int = -1) -> dict[str, Any]:
    """DataLoader worker settings: ``workers`` (-1: from the machine) started with
    forkserver/spawn, never fork (a forked worker of a multithreaded GUI process can
    deadlock)."""
    count = auto_workers() if workers < 0 else workers
    if count == 0:
        return {"num_workers": 0}
    methods = multiprocessing.get_all_start_methods()
    context = "forkserver" if "forkserver" in methods else "spawn"
    return {"num_workers": count, "multiprocessing_context": context}


# ---------------------------------------------------------------------------------------------
# Placement


def launched_by_torchrun() -> bool:
    """True inside a process that torchrun (or another launcher setting WORLD_SIZE) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class Placement:
    """This process's place in a run: its device, rank and the world around it."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    backend: str = ""  # "nccl" or "gloo" once distributed
    _control: Any = field(default=None, compare=False, repr=False)  # gloo group for flags

    @classmethod
    def single(cls, device: str | torch.device = "auto") -> Placement:
        return cls(device if isinstance(device, torch.device) else pick_device(device))

    @classmethod
    def from_environment(cls, device: str = "auto", timeout: float = DEFAULT_TIMEOUT,
                         backend: str = "auto") -> Placement:
        """The world torchrun describes in the environment, joined; or a world of one."""
        if not launched_by_torchrun():
            return cls.single(device)
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        world = int(os.environ["WORLD_SIZE"])
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        chosen = pick_device(device)
        if chosen.type == "mps":
            raise ConfigError("distributed training runs on CUDA GPUs or CPUs, not Apple MPS; "
                              "use device cpu or a single process")
        if chosen.type == "cuda":
            check_gpu_count(local_world)
            torch.cuda.set_device(local_rank)
            chosen = torch.device("cuda", local_rank)
        if backend == "auto":
            backend = backend_for(chosen)
        elif backend == "nccl" and chosen.type != "cuda":
            raise ConfigError("the nccl backend needs CUDA GPUs, and this run is on the CPU; "
                              "use backend gloo (or auto)")
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        control = dist.new_group(backend="gloo") if backend != "gloo" else None
        return cls(chosen, rank, local_rank, world, local_world, backend, control)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        if not self.distributed:
            return "1 process"
        return f"{self.world_size} processes ({self.backend})"

    # -- model and data -------------------------------------------------------------------

    def wrap_model(self, module: nn.Module, find_unused: bool = False) -> nn.Module:
        """``module`` itself in a world of one; a DistributedDataParallel around it otherwise.
        Wrap again after ``requires_grad`` changes: DDP reduces what trained when wrapped."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)

    def wrap_sampler(self, size: int, *, shuffle: bool, seed: int = 0,
                     weights: torch.Tensor | None = None) -> Sampler[int]:
        """This rank's share of ``size`` samples. Shuffled: a DistributedSampler (one
        permutation per epoch, ``set_epoch``; rank r takes every world-size-th index, so the
        ranks' batches together are the batches of one process with a world-size times larger
        batch), or weighted draws with replacement. Not shuffled: every sample exactly once
        over all ranks, nothing padded (validation)."""
        if not shuffle:
            return ShardSampler(size, self.rank, self.world_size)
        if weights is not None:
            return WeightedDistributedSampler(weights, self.world_size, self.rank, seed)
        return DistributedSampler(range(size), num_replicas=self.world_size, rank=self.rank,
                                  shuffle=True, seed=seed, drop_last=False)

    # -- collectives ----------------------------------------------------------------------

    def reduce(self, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Sum each tensor over all ranks, in place; returns them."""
        if self.distributed:
            for value in values:
                dist.all_reduce(value)
        return values

    def agree(self, flag: bool) -> bool:
        """True on every rank when any rank says True (stop requests). A collective: every rank
        must call it at the same point; on CPU tensors, so a GPU run is not synchronised."""
        if not self.distributed:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._control)
        return bool(value.item())

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers into ``module`` on every rank, in place."""
        if self.distributed:
            with torch.no_grad():
                for tensor in module.state_dict().values():
                    dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self._control)

    def on_main(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on rank 0 only and hand its result to every rank; a StudioError it
        raises ends every rank with the same sentence (so no rank waits for a failed one)."""
        result: tuple[Any, str | None] = (None, None)
        if self.is_main:
            try:
                result = (work(), None)
            except StudioError as error:
                result = (None, str(error))
        value, error = self.broadcast_object(result)
        if error is not None:
            raise (StudioError if self.is_main else MainRankError)(error)
        return value

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a run folder, a config, a checkpoint)."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def gather_object(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, value, group=self._control)
        return everyone

    def replicas_differ(self, tensors: dict[str, torch.Tensor]) -> list[str]:
        """The names of ``tensors`` that are not bit-identical on every rank (none: the
        processes agree)."""
        if not self.distributed:
            return []
        mine = {}
        for name, tensor in tensors.items():
            data = tensor.detach().cpu().contiguous().reshape(-1)
            digest = hashlib.blake2b(data.view(torch.uint8).numpy() if data.numel() else b"",
                                     digest_size=12)
            mine[name] = digest.hexdigest()
        everyone = self.gather_object(mine)
        return sorted(name for name in mine if any(other.get(name) != mine[name]
                                                   for other in everyone))

    def close(self) -> None:
        """Leave the process group together: a rank that tears its connections down while
        another is still in a collective can abort that one on its way out."""
        if self.distributed and dist.is_initialized():
            with contextlib.suppress(Exception):  # a peer is gone already: leave anyway
                dist.barrier(group=self._control)
            dist.destroy_process_group()


class MainRankError(StudioError):
    """Rank 0's error, raised on the other ranks too so that they end with it (rank 0 has
    already told the user)."""


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def check_gpu_count(processes: int) -> None:
    """Refuse more processes on this machine than it has GPUs (one GPU per process)."""
    gpus = torch.cuda.device_count()
    if processes > gpus:
        raise ConfigError(f"{processes} processes were asked for on this machine but it has "
                          f"{gpus} CUDA GPU{'s' if gpus != 1 else ''}; use at most {gpus} "
                          f"processes per machine, or device cpu")


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, …: each sample on exactly one rank, in order, no padding."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class WeightedDistributedSampler(Sampler[int]):
    """Class-balanced draws with replacement, the same stream on every rank and split between
    them as DistributedSampler splits a permutation; reseeded by ``set_epoch``."""

    def __init__(self, weights: Sequence[float] | torch.Tensor, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.num_samples = math.ceil(len(self.weights) / num_replicas)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.num_samples * self.num_replicas
        drawn = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        return iter(drawn[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
