"""The frozen app's entry point: the same ``studio`` command as a pip install gives."""

from __future__ import annotations

import multiprocessing
import sys

from studio.cli import main


def drop_interpreter_arguments(argv: list[str]) -> tuple[list[str], bool]:
    """Training processes are started as ``python [-u] -m studio ARGS`` (the window's
    multi-process runs, torchrun's workers); frozen, ``sys.executable`` is this app, which is
    ``studio`` already. Returns ARGS and whether ``-u`` (unbuffered output) was asked."""
    rest = list(argv)
    unbuffered = False
    while rest[:1] == ["-u"]:
        rest.pop(0)
        unbuffered = True
    if rest[:2] != ["-m", "studio"]:
        return argv, False
    return rest[2:], unbuffered


if __name__ == "__main__":
    multiprocessing.freeze_support()  # DataLoader workers start the bundle again (spawn)
    arguments, unbuffered = drop_interpreter_arguments(sys.argv[1:])
    if unbuffered:  # rank 0's JSON event lines must reach the window as they are written
        sys.stdout.reconfigure(write_through=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(write_through=True)  # type: ignore[union-attr]
    sys.exit(main(arguments))
