"""What this machine trains on: what device and precision "auto" pick, how many GPUs there
are, and how many training processes it can run. Probed once per app, in the background (it
imports torch), and shared by every panel that asks."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QCoreApplication

from studio.ui.tasks import BackgroundTask
from studio.ui.text import plural


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    auto_device: str  # what device "auto" picks, in words: "CPU", "NVIDIA H100 80GB HBM3"
    auto_precision: str  # what precision "auto" picks there
    cuda: bool
    mps: bool
    gpus: int = 0  # CUDA GPUs: at most one training process each


def probe_devices() -> DeviceInfo:
    """Ask torch what this machine has. Slow the first time (imports torch): call it off the
    GUI thread unless the trainer module is already loaded."""
    import torch

    from studio.engine.runtime import pick_device, pick_precision

    device = pick_device("auto")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device.index or 0)
    elif device.type == "mps":
        name = "Apple GPU (MPS)"
    else:
        name = "CPU"
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    cuda = torch.cuda.is_available()
    return DeviceInfo(name, pick_precision("auto", device), cuda, mps,
                      torch.cuda.device_count() if cuda else 0)


_device_info: DeviceInfo | None = None
_device_task: BackgroundTask | None = None


def request_device_info(receiver: Callable[[DeviceInfo], None]) -> DeviceInfo | None:
    """The device info now if known (or cheap to learn); else probe once in the background
    and call ``receiver`` (a bound method of a GUI-thread QObject) when it arrives."""
    global _device_info, _device_task
    if _device_info is None and "studio.engine.trainer" in sys.modules:
        _device_info = probe_devices()
    if _device_info is not None:
        return _device_info
    if _device_task is None:  # one probe for the whole app; it outlives any panel
        _device_task = BackgroundTask(QCoreApplication.instance())
        _device_task.succeeded.connect(_remember_device_info)
        _device_task.start(probe_devices)
    _device_task.succeeded.connect(receiver)
    return None


def _remember_device_info(info: DeviceInfo) -> None:
    global _device_info
    _device_info = info


def processes_limit(device: str, info: DeviceInfo | None) -> int:
    """The most training processes this machine runs for ``device``: one per GPU on CUDA,
    one per core on the CPU."""
    cores = os.cpu_count() or 1
    if info is None:
        return max(1, cores)  # not probed yet
    on_gpu = device == "cuda" or (device == "auto" and info.cuda)
    return max(1, info.gpus if on_gpu and info.cuda else cores)


def processes_hint(processes: int, device: str, info: DeviceInfo | None) -> str:
    """What ``processes`` processes on ``device`` mean, in a few words."""
    if processes <= 1:
        return "one process"
    if device == "mps":
        return "several processes run on CUDA GPUs or the CPU, not on Apple MPS"
    if device == "auto" and info is None:
        return f"{processes} processes, a batch each"
    if device == "cuda" or (device == "auto" and info is not None and info.cuda):
        if info is not None and processes > info.gpus:
            return (f"{processes} processes need {processes} GPUs, one each; this machine has "
                    f"{plural(info.gpus, 'GPU')}")
        return f"{processes} GPUs (NCCL), a batch each"
    return f"{processes} CPU processes (gloo), a batch each"
