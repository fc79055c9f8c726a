"""Turning the engine's messages into what a panel shows."""

from __future__ import annotations

from studio.format import plural  # noqa: F401 - the panels import it from here


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

