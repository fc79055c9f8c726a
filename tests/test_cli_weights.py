"""`studio train` with pretrained weights that are not cached: they come down first, with a
progress line, from a local server standing in for download.pytorch.org."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from studio.cli import main
from studio.cli.common import DownloadProgress


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from two busy cores
    yield
    torch.set_num_threads(threads)


def test_train_downloads_uncached_weights_first_and_says_so(
        served_weights, tiny_dataset: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", str(tiny_dataset), "--backbone", "squeezenet1_1",
                 "--weights", "default", "--image-size", "32", "--epochs", "1", "--workers", "0",
                 "--precision", "fp32", "--device", "cpu", "--batch-size", "8",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0, err
    name = served_weights.cached.name
    assert f"downloading {name} ({served_weights.size / 1e6:.1f} MB)" in err
    assert f"downloaded {name}" in err
    assert served_weights.cached.read_bytes() == served_weights.file.read_bytes()


def test_the_download_line_is_live_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = DownloadProgress("w-0123abcd.pth", stream)
    for done in (0, 1_000_000, 2_000_000):
        progress(done, 2_000_000)
    lines = stream.getvalue()
    assert lines.startswith("\r\033[Kdownloading w-0123abcd.pth 0.0/2.0 MB")
    assert lines.endswith(" MB/s\n") and "2.0/2.0 MB" in lines
