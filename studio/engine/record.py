"""The reproducibility record of a run (``run.json``) and the dataset's fingerprint.

``run.json`` says what produced a run: Studio, Python, torch, torchvision (and CUDA/cuDNN)
versions, the device, the precision actually used, the seed and determinism, the command line
(or "app"), the process that runs it (so a listing can tell a running run from one whose
process died), and a fingerprint of the dataset: a hash of the sorted (relative path, size,
modification time, label) list, with that list kept beside it (``dataset_files.json.gz``) so a
re-run can say which files changed. Only torch-free imports at module level: listing runs and
checking a re-run stay fast.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio import __version__
from studio.engine.config_io import atomic_write_text

RECORD_FORMAT = "finetune-studio-run"
RECORD_VERSION = 1


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the dataset root, with "/" separators
    size: int
    mtime_ns: int
    label: str


def dataset_entries(root: str | os.PathLike[str], samples: Iterable[tuple[str, str]]
                    ) -> list[FileEntry]:
    """(relative path, size, mtime, label) of every (path, label) sample, sorted by path."""
    base = Path(root).resolve()
    entries = []
    for path, label in samples:
        stat = os.stat(path)
        try:
            relative = Path(path).resolve().relative_to(base).as_posix()
        except ValueError:  # outside the root (a symlinked file): keep its own path
            relative = Path(path).as_posix()
        entries.append(FileEntry(relative, stat.st_size, stat.st_mtime_ns, label))
    return sorted(entries, key=lambda e: e.path)


def fingerprint(entries: Sequence[FileEntry], content: bool = False,
                root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The dataset's fingerprint: a SHA-256 of the entries, and optionally of the bytes of
    every file too (slow on big datasets, so off unless asked)."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry.path}\0{entry.size}\0{entry.mtime_ns}\0{entry.label}\n".encode())
    result: dict[str, Any] = {"hash": digest.hexdigest(), "files": len(entries),
                              "content_hash": None}
    if content and root is not None:
        data = hashlib.sha256()
        for entry in entries:
            with open(Path(root) / entry.path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023
                    data.update(chunk)
        result["content_hash"] = data.hexdigest()
    return result


def scan_entries(scan: Any) -> list[FileEntry]:
    """The entries of every split of a DatasetScan."""
    samples = [(s.path, scan.classes[s.label]) for split in scan.splits.values() for s in split]
    return dataset_entries(scan.root, samples)


def environment(device: str, precision: str) -> dict[str, Any]:
    """Library versions and the device, as they are in this process."""
    import torch
    import torchvision

    cuda = torch.version.cuda if torch.cuda.is_available() else None
    cudnn = torch.backends.cudnn.version() if cuda else None
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        name = torch.cuda.get_device_name(index)
    else:
        name = cpu_name()
    return {"studio": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": cuda, "cudnn": cudnn, "device": device, "device_name": name,
            "precision": precision, "platform": platform.platform()}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def this_process() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "boot": _boot_id()}


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip()
    except OSError:
        return None


def write_record(path: Path, files_path: Path, *, config: Any, scan: Any, device: str,
                 precision: str, processes: int, command: Sequence[str] | str,
                 rerun_of: str | None = None, resumed: bool = False,
                 hash_content: bool = False) -> dict[str, Any]:
    """Write ``run.json`` (and the dataset's file list) at the start of a fit. A resumed fit
    keeps the first session's record and appends its own session."""
    entries = scan_entries(scan)
    session = {**this_process(), "command": list(command) if not isinstance(command, str)
               else command, **environment(device, precision), "processes": processes}
    previous = read_record(path.parent) if resumed else None
    if previous is not None:
        record = previous
        record.setdefault("sessions", []).append(session)
        record["process"] = this_process()
    else:
        counts = {split: len(samples) for split, samples in scan.splits.items()}
        record = {
            "format": RECORD_FORMAT, "version": RECORD_VERSION,
            **environment(device, precision),
            "seed": config.train.seed, "deterministic": config.train.deterministic,
            "command": session["command"], "processes": processes,
            "process": this_process(), "rerun_of": rerun_of,
            "dataset": {"root": str(Path(scan.root).resolve()), "splits": counts,
                        "classes": list(scan.classes),
                        "fingerprint": fingerprint(entries, hash_content, scan.root)},
            "sessions": [session],
        }
        write_files(files_path, entries)
    atomic_write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return record


def write_files(path: Path, entries: Sequence[FileEntry]) -> None:
    rows = [[e.path, e.size, e.mtime_ns, e.label] for e in entries]
    payload = gzip.compress(json.dumps(rows, separators=(",", ":")).encode(), mtime=0)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def read_files(path: Path) -> list[FileEntry] | None:
    try:
        rows = json.loads(gzip.decompress(path.read_bytes()))
        return [FileEntry(str(p), int(s), int(m), str(label)) for p, s, m, label in rows]
    except (OSError, ValueError, TypeError, EOFError):
        return None


def read_record(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's ``run.json``, or None when it has none (runs before the record existed) or
    it is unreadable."""
    try:
        record = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT \
        else None


def process_alive(process: dict[str, Any] | None) -> bool | None:
    """Whether the process a record names still runs: True/False on this machine (same host
    and boot), None where it cannot be told (another machine)."""
    if not process:
        return False
    if process.get("host") != socket.gethostname() or process.get("boot") != _boot_id():
        return None
    try:
        os.kill(int(process["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# What changed since a run


def changed_files(old: Sequence[FileEntry], new: Sequence[FileEntry]) -> tuple[int, int, int]:
    """(added, removed, changed) between two file lists."""
    before = {e.path: e for e in old}
    after = {e.path: e for e in new}
    added = sum(1 for p in after if p not in before)
    removed = sum(1 for p in before if p not in after)
    changed = sum(1 for p, e in after.items() if p in before and before[p] != e)
    return added, removed, changed


def rerun_differences(run_dir: str | os.PathLike[str], scan: Any) -> list[str]:
    """What differs between a run's record and now: dataset files, library versions. Empty
    when the record matches (or there is none to compare: then one line says so)."""
    record = read_record(run_dir)
    if record is None:
        return [f"{run_dir} has no run.json (it predates the record), so the dataset and "
                f"library versions cannot be compared"]
    notes = []
    entries = scan_entries(scan)
    saved = read_files(Path(run_dir) / "dataset_files.json.gz")
    if fingerprint(entries)["hash"] != record.get("dataset", {}).get("fingerprint", {}).get(
            "hash"):
        if saved is None:
            notes.append("the dataset changed since this run")
        else:
            added, removed, changed = changed_files(saved, entries)
            parts = [f"{n} file{'s' if n != 1 else ''} {what}" for n, what in
                     ((changed, "changed"), (added, "added"), (removed, "removed")) if n]
            notes.append(", ".join(parts or ["the labels changed"]) + " since this run")
    saved_content = record.get("dataset", {}).get("fingerprint", {}).get("content_hash")
    if saved_content and not notes and fingerprint(entries, True, scan.root)["content_hash"] \
            != saved_content:  # same names, sizes and times, other bytes
        notes.append("the images' contents changed since this run (same names, sizes and "
                     "times)")
    now = environment(record.get("device", "cpu"), record.get("precision", ""))
    for key in ("studio", "torch", "torchvision", "python", "cuda"):
        if record.get(key) != now.get(key):
            notes.append(f"{key} {record.get(key)} → {now.get(key)}")
    return notes
