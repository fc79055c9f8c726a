"""What every subcommand shares: exit codes and a terminal progress counter."""

from __future__ import annotations

import sys
from typing import TextIO

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


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
