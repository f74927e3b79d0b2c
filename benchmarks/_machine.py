"""Where a benchmark ran, for its JSON report: the machine, the versions of what it measured,
poolkit's commit and the load average. One copy for every script in ``benchmarks/``."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def machine_info(dists: Iterable[str]) -> dict[str, Any]:
    """The machine, the interpreter, the installed versions of ``dists`` (None: not installed)
    and the checkout's commit (:func:`git_commit`)."""
    versions: dict[str, str | None] = {}
    for dist in dists:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "poolkit_commit": git_commit(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": versions,
    }


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    return done.stdout.strip() if done.returncode == 0 else ""


def _dirty(commit: str) -> str | None:
    return (commit + ("+dirty" if _git("status", "--porcelain", "--", "src") else "")) or None


def git_commit() -> str | None:
    """The checkout's commit, with "+dirty" if src/ has uncommitted changes (None: not a checkout)."""
    try:
        return _dirty(_git("rev-parse", "HEAD"))
    except (OSError, subprocess.SubprocessError):
        return None


def src_commit() -> str | None:
    """The last commit that touched src/ (``git log -1 --format=%h -- src``), "+dirty" if src/
    has uncommitted changes: what poolkit's figures measured."""
    try:
        return _dirty(_git("log", "-1", "--format=%h", "--", "src"))
    except (OSError, subprocess.SubprocessError):
        return None


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
