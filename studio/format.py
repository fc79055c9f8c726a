"""How durations and sizes read, the same in the window and on the terminal (no Qt, no torch)."""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """1:23, 12:03, 1:02:03."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_size(size: float) -> str:
    """512 B, 44.9 MB, 1.2 GB (decimal units, as file managers show them)."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def plural(count: int, word: str, plural: str = "") -> str:
    """``1 class``, ``3 classes``, ``12,000 images``."""
    return f"{count:,} {word if count == 1 else plural or word + 's'}"


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's text (its type's name when it has none), at most ``limit``
    characters: what a one-sentence message quotes of an error it explains."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[:limit - 1] + "…"
