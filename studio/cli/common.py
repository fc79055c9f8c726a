"""What every subcommand shares: exit codes and a terminal progress counter."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from studio.format import format_duration as duration  # noqa: F401 - the CLI's name

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class Progress:
    """A one-line progress counter on a terminal; silent otherwise."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label, self.stream = label, stream
        self.live = stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self.live:
            end = "\n" if done >= total else ""
            self.stream.write(f"\r{self.label} {done}/{total}{end}")
            self.stream.flush()


class DownloadProgress:
    """A download as one live line on a terminal (size, MB/s); a line as it starts and one as it
    ends otherwise, so that logs say where the time went."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label, self.stream = label, stream or sys.stderr  # sys.stderr as it is now
        self.live = self.stream.isatty()
        self.started: float | None = None
        self.first = 0
        self.drawn = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started, self.first = now, done
            if not self.live:
                size = f" ({total / 1e6:.1f} MB)" if total else ""
                resume = f", resuming at {done / 1e6:.1f} MB" if done else ""
                self._write(f"downloading {self.label}{size}{resume}\n")
        finished = total is not None and done >= total
        speed = (done - self.first) / max(now - self.started, 1e-6) / 1e6
        if self.live and (finished or now - self.drawn >= 0.1):
            self.drawn = now
            size = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
            self._write(f"\r\033[Kdownloading {self.label} {size} {speed:.1f} MB/s"
                        + ("\n" if finished else ""))
        elif finished and not self.live:
            self._write(f"downloaded {self.label} ({speed:.1f} MB/s)\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
