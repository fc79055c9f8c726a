"""Pretrained weights into torch hub's cache: resumable, checksum-verified downloads, and imports.

One downloader serves the CLI, the trainer and the app, so a file is always fetched the same
way: into ``<file>.part`` beside its final place (a cut download resumes from there with an HTTP
Range request), verified against the SHA-256 prefix torchvision puts in its file names, then
moved into place with ``os.replace``. torch hub finds the file there and never downloads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torchvision import models

from studio.engine.config import ModelConfig
from studio.engine.errors import StudioError, WeightsError

ProgressCallback = Callable[[int, int | None], None]
"""Called with (bytes done, total bytes or None when the server does not say)."""

CHUNK = 64 * 1024
TIMEOUT_S = 30.0  # per connect and per read: a stalled server becomes an error, not a hang
RESUMES = 3  # a connection cut after some progress is picked up again this many times
LOCK_POLL_S = 0.2
IMPORT_SUFFIXES = (".pth", ".pt", ".safetensors")
# torchvision's DenseNet checkpoints predate '.'-free module names; its loader renames these.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


class DownloadCancelled(StudioError):
    """The user cancelled; the partial file is kept so that the next download resumes."""


class _Cut(Exception):
    """The connection ended before the whole file arrived (internal: retried, then reported)."""


def hub_cache_path(weights: Any) -> Path:
    """Where torch hub keeps (or would keep) the file of a torchvision weights enum member."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _file_name(weights.url)


def part_path(dest: Path) -> Path:
    """The partial download beside ``dest``; it survives a cancel or a cut connection."""
    return dest.with_suffix(dest.suffix + ".part")


def expected_hash_prefix(file_name: str) -> str | None:
    """The SHA-256 prefix in a torchvision file name (``resnet18-f37072fd.pth`` → f37072fd), as
    torch hub reads it with ``HASH_REGEX``; None when the name carries none."""
    match = torch.hub.HASH_REGEX.search(file_name)
    return match.group(1) if match else None


def weights_to_download(config: ModelConfig) -> Any | None:
    """The pretrained weights ``config`` asks for when they are not cached yet, else None
    (weights 'none', a local file, or a name that is not valid: building reports that)."""
    from studio.engine.backbones import is_weights_file, resolve_weights
    from studio.engine.timm_zoo import is_timm

    if config.weights == "none" or is_weights_file(config.weights) or is_timm(config.backbone):
        return None  # timm reads (and fetches) its weights through the Hugging Face cache
    try:
        weights = resolve_weights(config.backbone, config.weights)
    except (StudioError, ValueError):
        return None
    if weights is None or hub_cache_path(weights).is_file():
        return None
    return weights


def ensure_pretrained(config: ModelConfig, progress: ProgressCallback | None = None,
                      cancel: threading.Event | None = None) -> Path | None:
    """Download the pretrained weights ``config`` needs, if any are missing; their path."""
    weights = weights_to_download(config)
    return None if weights is None else download_pretrained(weights, progress, cancel)


def download_pretrained(weights: Any, progress: ProgressCallback | None = None,
                        cancel: threading.Event | None = None) -> Path:
    """``download_weights`` for a model about to be built: the advice names weights 'none'."""
    try:
        return download_weights(weights, None, progress, cancel)
    except DownloadCancelled:
        raise
    except WeightsError as error:
        raise WeightsError(f"{error}, or choose weights 'none' or a local file") from error


# ---------------------------------------------------------------------------------------------
# Downloading


def download_weights(weights_or_url: Any | str, dest: str | os.PathLike[str] | None = None,
                     progress: ProgressCallback | None = None,
                     cancel: threading.Event | None = None) -> Path:
    """Fetch a weights file (an enum member or a URL) to ``dest`` (default: torch hub's cache).

    Resumes ``dest.part`` when one is there, checks the SHA-256 prefix of the file name, and
    only then moves the file into place. Raises DownloadCancelled when ``cancel`` is set (the
    partial file stays) and WeightsError with one sentence on anything else.
    """
    url = weights_or_url if isinstance(weights_or_url, str) else weights_or_url.url
    if dest is None:
        dest = Path(torch.hub.get_dir()) / "checkpoints" / _file_name(url)
    dest = Path(dest)
    if dest.is_file():
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsError(f"cannot create the weights folder {dest.parent} "
                           f"({error.strerror or error}); make it writable or set TORCH_HOME "
                           f"to another folder") from error
    with _exclusive(dest, cancel):
        if dest.is_file():  # another process fetched it while this one waited
            return dest
        _fetch(url, dest, progress, cancel)
        _verify(url, dest)
        os.replace(part_path(dest), dest)
    with contextlib.suppress(OSError):
        _lock_path(dest).unlink()  # only once the file is there: a waiter then sees it
    return dest


def _fetch(url: str, dest: Path, progress: ProgressCallback | None,
           cancel: threading.Event | None) -> None:
    """Fill ``dest.part`` with the whole file, resuming it and retrying cut connections."""
    part = part_path(dest)
    restarts = resumes = 0
    while True:
        _check_cancel(cancel, url, part)
        have = part.stat().st_size if part.is_file() else 0
        try:
            outcome = _transfer(url, part, have, progress, cancel)
        except _Cut as cut:
            grew = (part.stat().st_size if part.is_file() else 0) > have
            if grew and resumes < RESUMES:
                resumes += 1
                continue
            raise WeightsError(f"the download of {url} was cut off ({cut}); try again to resume "
                               f"it, or download the file yourself and save it as "
                               f"{dest}") from None
        if outcome == "restart" and restarts < 1:
            restarts += 1
            part.unlink(missing_ok=True)
            continue
        if outcome == "restart":
            raise WeightsError(f"{url} does not answer range requests consistently; delete "
                               f"{part} and try again, or download the file yourself and save "
                               f"it as {dest}")
        return


def _transfer(url: str, part: Path, have: int, progress: ProgressCallback | None,
              cancel: threading.Event | None) -> str:
    """One request: 'done', or 'restart' when the partial file cannot be continued."""
    request = urllib.request.Request(url, headers={"User-Agent": "finetune-studio"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left after `have`: complete, or not this file
            size = _range_total(error.headers.get("Content-Range", ""))
            return "done" if size == have else "restart"
        raise WeightsError(f"{url} answered {error.code} {error.reason}; check the address, "
                           f"or download the file yourself and save it as "
                           f"{_final(part)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise WeightsError(f"could not download {url} ({reason}); check the internet "
                           f"connection and try again, or download the file yourself and save "
                           f"it as {_final(part)}") from None
    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        if status == 206:
            start = _range_start(response.headers.get("Content-Range", ""))
            if start != have:
                return "restart"
            total = _range_total(response.headers.get("Content-Range", ""))
            mode = "ab"
        else:  # 200: the server sends the whole file, whatever was asked
            have, mode = 0, "wb"
            total = int(length) if length and length.isdigit() else None
        if total is None and length and length.isdigit():
            total = have + int(length)
        done = have
        if progress is not None:
            progress(done, total)
        try:
            out = open(part, mode)  # noqa: SIM115 - closed below, whatever happens
        except OSError as error:
            raise _unwritable(part, error) from error
        with out:
            while not (cancel is not None and cancel.is_set()):
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as error:
                    raise _Cut(str(error) or type(error).__name__) from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as error:
                    raise _unwritable(part, error) from error
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    _check_cancel(cancel, url, part)
    if total is not None and done < total:
        raise _Cut(f"{done / 1e6:.1f} of {total / 1e6:.1f} MB arrived")
    return "done"


def _verify(url: str, dest: Path) -> None:
    """torch hub's check: the file's SHA-256 starts with the hex digits in its name."""
    prefix = expected_hash_prefix(dest.name)
    if not prefix:
        return
    part = part_path(dest)
    digest = hashlib.sha256()
    with open(part, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(prefix):
        part.unlink(missing_ok=True)
        raise WeightsError(f"the file downloaded from {url} failed its checksum (its SHA-256 "
                           f"does not start with {prefix}) and was deleted; try again, or "
                           f"download it yourself and save it as {dest}")


def _check_cancel(cancel: threading.Event | None, url: str, part: Path) -> None:
    if cancel is not None and cancel.is_set():
        kept = part.stat().st_size if part.is_file() else 0
        raise DownloadCancelled(f"the download of {url} was cancelled; the {kept / 1e6:.1f} MB "
                                f"received so far are kept in {part}, and the next download "
                                f"resumes from there")


def _unwritable(part: Path, error: OSError) -> WeightsError:
    return WeightsError(f"cannot write {part} ({error.strerror or error}); free some space, or "
                        f"set TORCH_HOME to a folder on another disk")


def _range_start(header: str) -> int | None:
    match = re.match(r"bytes\s+(\d+)-", header)
    return int(match.group(1)) if match else None


def _range_total(header: str) -> int | None:
    match = re.search(r"/(\d+)\s*$", header)
    return int(match.group(1)) if match else None


def _file_name(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def _final(part: Path) -> Path:
    return part.with_suffix("")


def _lock_path(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".lock")


@contextlib.contextmanager
def _exclusive(dest: Path, cancel: threading.Event | None) -> Iterator[None]:
    """One writer per file across processes (torchrun ranks started by hand all build the
    model): the others wait here, then find the file in place. POSIX only; elsewhere, none."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; a second writer would fail the checksum at worst
        yield
        return
    try:
        handle = open(_lock_path(dest), "a+b")  # noqa: SIM115 - held for the whole block
    except OSError as error:
        raise WeightsError(f"cannot write in {dest.parent} ({error.strerror or error}); make "
                           f"it writable or set TORCH_HOME to another folder") from error
    with handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if cancel is not None:
                    if cancel.wait(LOCK_POLL_S):
                        raise DownloadCancelled(f"the download of {dest.name} was cancelled "
                                                f"while another download of it ran") from None
                else:
                    time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# Importing a file the user downloaded


def import_weights_file(source: str | os.PathLike[str], weights: Any) -> Path:
    """Put a user's ``.pth``/``.safetensors`` file where torch hub looks for ``weights``.

    The tensors must be exactly those of the architecture (names and shapes), since torchvision
    loads them strictly. A .pth already in that form is copied as it is; anything else (a
    safetensors file, a wrapped or prefixed checkpoint) is saved as a plain state dict with
    ``torch.save``. Either way the file lands atomically. Its checksum is not checked: torch hub
    checks hashes only when it downloads, so the file is used as given.
    """
    from studio.engine.backbones import read_state_dict, strip_prefixes

    source = Path(source).expanduser()
    if source.suffix.lower() not in IMPORT_SUFFIXES:
        raise WeightsError(f"{source} is not a weights file Studio imports; choose a .pth or "
                           f".safetensors file")
    state = read_state_dict(source)  # tensors only: torch.load(weights_only=True), safetensors
    plain = strip_prefixes(state)
    name = _model_name(weights)
    _check_fits(plain, name, weights, source)
    dest = hub_cache_path(weights)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(handle)
        try:
            if plain is state and source.suffix.lower() != ".safetensors" \
                    and _is_plain_state_dict(source):
                shutil.copyfile(source, temp)
            else:
                torch.save(plain, temp)
            os.replace(temp, dest)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise WeightsError(f"cannot write {dest} ({error.strerror or error}); make "
                           f"{dest.parent} writable or set TORCH_HOME to another "
                           f"folder") from error
    return dest


def _is_plain_state_dict(path: Path) -> bool:
    """True when the file itself is a flat dict of tensors (so torchvision reads it as is)."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    return isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values())


def _model_name(weights: Any) -> str:
    for name in models.list_models(module=models):
        if models.get_model_weights(name) is type(weights):
            return name
    raise WeightsError(f"{weights} are not the weights of a torchvision classification model")


def _check_fits(state: dict[str, torch.Tensor], name: str, weights: Any, source: Path) -> None:
    """Names and shapes of the model torchvision builds for ``weights``, compared on the meta
    device (no memory, no time); a mismatch is a sentence naming a few of the differences."""
    kwargs: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    family = models.get_model_builder(name).__module__.rsplit(".", 1)[-1]
    if family == "vision_transformer":
        kwargs["image_size"] = weights.meta["min_size"][0]
    if family == "maxvit":
        kwargs["input_size"] = tuple(weights.meta["min_size"])
    try:
        with torch.device("meta"):
            model = models.get_model(name, weights=None, **kwargs)
    except (NotImplementedError, RuntimeError):  # RegNet computes on tensors while building
        from studio.engine.backbones import _skipped_init

        with _skipped_init():
            model = models.get_model(name, weights=None, **kwargs)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    if family == "densenet":
        given = {_DENSENET_OLD_KEY.sub(r"\1\2", k): shape for k, shape in given.items()}
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {given[k]} instead of {expected[k]}" for k in given
              if k in expected and given[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors are missing ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} are not in {name} ({_few(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} have another shape ({_few(shapes)})")
    if problems:
        raise WeightsError(f"{source} does not hold the {name} {weights.name} weights: "
                           f"{'; '.join(problems)}; choose the file downloaded from "
                           f"{weights.url}")


def _few(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … {len(items) - limit} more" if len(items) > limit else "")
