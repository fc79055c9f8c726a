"""Turning the engine's messages into what a panel shows."""

from __future__ import annotations


def sentence(message: str) -> str:
    """Engine errors start in lower case and carry no full stop; a panel shows a sentence.

    A first word that names a config field or a file ("image_size must…", "weights.pth is…")
    keeps its spelling.
    """
    message = message.strip()
    if not message:
        return message
    first = message.split(" ", 1)[0]
    if "_" not in first and "." not in first and "/" not in first:
        message = message[0].upper() + message[1:]
    return message if message[-1] in ".!?" else message + "."


def plural(count: int, word: str, plural: str = "") -> str:
    """``1 class``, ``3 classes``, ``12,000 images``."""
    return f"{count:,} {word if count == 1 else plural or word + 's'}"
