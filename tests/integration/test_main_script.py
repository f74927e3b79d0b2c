"""Functions defined in the user's script: workers import the script (as multiprocessing's
spawn does) to find them. A guarded script works with either start method; a script that
starts its pool at import time is told why its calls fail, instead of starting a pool
inside every worker."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _util import scaled

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("processes")]

GUARDED = """
import anyio
from poolkit import Pool, PoolConfig, WorkerSpec

def square(x):
    return x * x

async def main():
    async with Pool(PoolConfig(min_workers=1, worker=WorkerSpec(start_method={method!r}))) as pool:
        print("result", await pool.call(square, 7))

if __name__ == "__main__":
    anyio.run(main)
"""

UNGUARDED = """
import anyio
from poolkit import Pool, PoolConfig, PoolError

def square(x):
    return x * x

async def main():
    async with Pool(PoolConfig(min_workers=1)) as pool:
        try:
            await pool.call(square, 7)
        except PoolError as exc:
            print("failed", type(exc).__name__, exc)
        else:
            print("ran")

anyio.run(main)  # no __main__ guard: a worker importing this script would start a pool
"""


def run_script(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("method", ["exec", "zygote"])
def test_a_function_of_a_guarded_script_runs_in_the_workers(tmp_path: Path, method: str) -> None:
    """``pool.call(square, 7)`` where ``square`` is defined in the script being run."""
    done = run_script(tmp_path, GUARDED.format(method=method))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["result", "49"]


def test_a_script_that_starts_its_pool_on_import_is_told_to_guard_it(tmp_path: Path) -> None:
    """Without ``if __name__ == "__main__":`` the worker, importing the script to find
    ``square``, would start a pool of its own. The pool refuses to start there and the call
    fails with a message that says what to do; the script ends (no nested pools, no hang)."""
    done = run_script(tmp_path, UNGUARDED)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("failed SerializationError"), done.stdout
    assert "start the pool under 'if __name__ == \"__main__\":'" in done.stdout
