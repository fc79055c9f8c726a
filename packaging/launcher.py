"""The frozen app's entry point: the same ``studio`` command as a pip install gives."""

from __future__ import annotations

import multiprocessing
import sys

from studio.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # DataLoader workers start the bundle again (spawn)
    sys.exit(main())
