"""Shared test setup: Qt offscreen before anything imports it; tiny generated image folders and
one tiny trained run that engine, CLI and UI tests read (never change: copy it first)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if "STUDIO_RUNS_DIR" not in os.environ:  # a run without --out must not land in the user's home
    import tempfile

    os.environ["STUDIO_RUNS_DIR"] = tempfile.mkdtemp(prefix="studio-test-runs-")
if "STUDIO_CACHE_DIR" not in os.environ:  # …nor feature and timm caches
    import tempfile

    os.environ["STUDIO_CACHE_DIR"] = tempfile.mkdtemp(prefix="studio-test-cache-")
if "STUDIO_LOG_FILE" not in os.environ:  # …nor a test's traceback in the user's log
    import tempfile

    os.environ["STUDIO_LOG_FILE"] = os.path.join(tempfile.mkdtemp(prefix="studio-test-log-"),
                                                 "studio.log")

import http.server  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

TINY_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 220)}


def write_tiny_dataset(root: Path, per_class: int = 10, size: int = 16) -> Path:
    """One folder per class of ``per_class`` noisy solid-colour ``size``-pixel PNGs."""
    rng = random.Random(0)
    for name, colour in TINY_COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.new("RGB", (size, size), colour)
            pixels = image.load()
            for _ in range(size * 2):
                x, y = rng.randrange(size), rng.randrange(size)
                pixels[x, y] = tuple(min(255, max(0, c + rng.randint(-60, 60))) for c in colour)
            image.save(folder / f"{name}_{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 10 images of 16×16 pixels, shared read-only by every test of a session."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="session")
def make_tiny_dataset() -> Callable[..., Path]:
    """The writer itself, for tests that need their own copy to change."""
    return write_tiny_dataset


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run: resnet18 at 32 px, 3 epochs on 3 colours × 10 images (3 per class held
    back for validation). Read-only; copy it before changing anything."""
    import torch

    from studio.engine.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
    from studio.engine.events import Outcome
    from studio.engine.trainer import Trainer

    root = tmp_path_factory.mktemp("trained")
    data = write_tiny_dataset(root / "data", per_class=10, size=16)
    config = RunConfig(
        data=DataConfig(root=str(data), image_size=32, augment="none", val_fraction=0.3),
        model=ModelConfig(backbone="resnet18", weights="none"),
        optim=OptimConfig(lr=1e-3, schedule="none"),
        train=TrainConfig(epochs=3, batch_size=4, workers=0, precision="fp32", device="cpu",
                          seed=0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from two busy cores
    try:
        result = Trainer(config, root / "run").fit()
    finally:
        torch.set_num_threads(threads)
    assert result.outcome is Outcome.COMPLETED, result.message
    return root / "run"


# ---------------------------------------------------------------------------------------------
# Pretrained weights from a local HTTP server, into a torch hub cache of the test's own


class FileServer:
    """Serves the files of ``root`` on 127.0.0.1 with HTTP Range support (the stdlib handler
    has none), records every request, and can misbehave on purpose: ``cut_after`` bytes (the
    next response only, then the connection closes), ``gate`` (hold the rest of the body after
    ``gate_after`` bytes until it is set), ``ignore_range`` (answer 200 with the whole file)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[dict[str, object]] = []
        self.cut_after: int | None = None
        self.gate: threading.Event | None = None
        self.gate_after = 64 * 1024
        self.ignore_range = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server._answer(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    @property
    def bytes_sent(self) -> int:
        return sum(int(str(r["sent"])) for r in self.requests)

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        path = self.root / handler.path.lstrip("/")
        asked = handler.headers.get("Range")
        record: dict[str, object] = {"path": path.name, "range": asked, "sent": 0}
        self.requests.append(record)
        if not path.is_file():
            handler.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", asked or "")
        if match and not self.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header("Content-Range",
                                f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            handler.send_response(200)
        handler.send_header("Content-Length", str(len(data) - start))
        handler.end_headers()
        body = data[start:]
        cut, self.cut_after = self.cut_after, None
        if cut is not None:
            body = body[:cut]
        gate, offset = self.gate, 0
        while offset < len(body):
            if gate is not None and offset >= self.gate_after:
                gate.wait(30)
                gate = None
            piece = body[offset:offset + 64 * 1024]
            try:
                handler.wfile.write(piece)
            except OSError:  # the client went away (a cancel)
                return
            offset += len(piece)
            record["sent"] = offset
        if cut is not None:
            handler.close_connection = True

    def close(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache: TORCH_HOME points at a tmp folder (and no set_dir overrides
    it); returns the folder weights go to."""
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    server = FileServer(root)
    yield server
    server.close()


@pytest.fixture(scope="session")
def squeezenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """squeezenet1_1's random weights saved as torchvision would name them:
    ``squeezenet1_1-<first 8 hex digits of the SHA-256>.pth`` (about 5 MB)."""
    import hashlib

    import torch
    from torchvision import models

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    staging = folder / "squeezenet1_1.pth"
    torch.save(models.squeezenet1_1(weights=None).state_dict(), staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    return staging.rename(folder / f"squeezenet1_1-{digest[:8]}.pth")


@dataclass
class ServedWeights:
    weights: object  # the squeezenet1_1 weights enum member, its url pointing at the server
    url: str
    file: Path  # the served file
    cached: Path  # where the download lands

    @property
    def size(self) -> int:
        return self.file.stat().st_size


@pytest.fixture
def served_weights(file_server: FileServer, squeezenet_file: Path, hub_home: Path,
                   monkeypatch: pytest.MonkeyPatch) -> ServedWeights:
    """squeezenet1_1's default weights, served by ``file_server``: the enum's url points there."""
    import shutil

    from torchvision import models

    weights = models.SqueezeNet1_1_Weights.DEFAULT
    served = file_server.root / squeezenet_file.name
    shutil.copyfile(squeezenet_file, served)
    url = file_server.url(served.name)
    monkeypatch.setattr(weights.value, "url", url)
    return ServedWeights(weights, url, served, hub_home / served.name)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full-zoo", action="store_true",
                     help="also run the tests marked full_zoo: every torchvision model, slowly "
                          "(the default suite checks one model of each family)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--full-zoo"):
        return
    deselected = [item for item in items if "full_zoo" in item.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if "full_zoo" not in item.keywords]
