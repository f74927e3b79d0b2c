"""Entry point of ``python -m poolkit.worker '<json spec>'``."""

from __future__ import annotations

import sys

from ._runtime import main

if __name__ == "__main__":
    sys.exit(main())
