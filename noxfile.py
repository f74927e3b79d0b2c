"""Developer and CI entry points: ``nox -l`` lists them, ``nox`` runs what CI runs.

CI (``.ci/run``) runs ``nox -s lint typecheck tests downstream chaos``, the same line the README
gives.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import tomllib
from pathlib import Path

import nox

nox.needs_version = ">=2024.4.15"

# Plain `nox` runs what CI runs.
nox.options.sessions = ["lint", "typecheck", "tests", "downstream", "chaos"]
# Reuse session venvs between local runs (much faster iteration). Every session still runs
# `pip install` each time, so new or raised dependencies are picked up; only a dependency removed
# from pyproject.toml lingers until `nox --reuse-venv=no` rebuilds. CI starts from a fresh clone
# with no .nox/, so this never affects CI.
nox.options.reuse_venv = "yes"

PYTHON = "3.11"
ROOT = Path(__file__).parent
LINT_PATHS = ["src", "tests", "examples", "benchmarks", "noxfile.py"]
DOWNSTREAM = ROOT / "examples" / "downstream"
CHAOS_DIR = ROOT / "tests" / "chaos"
# Forwarded to pytest when set: multiplies the tests' timeouts on slow machines (tests/_util.py).
PASSTHROUGH_ENV = ["POOLKIT_TIMEOUT_FACTOR"]
# Where the test runs record the events their pools emit (tests/conftest.py, tests/catalog).
CATALOG_ENV = "POOLKIT_EVENT_CATALOG_DIR"


def _dev_requirement(name: str) -> str:
    """The requirement string for `name` from the `dev` extra, so bounds live in one place."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        dev = tomllib.load(f)["project"]["optional-dependencies"]["dev"]
    for req in dev:
        if req == name or req.startswith((f"{name}>", f"{name}<", f"{name}=", f"{name}~", f"{name}[")):
            return str(req)
    raise LookupError(f"{name!r} is not in the dev extra of pyproject.toml")


def _pytest_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**{name: os.environ[name] for name in PASSTHROUGH_ENV if name in os.environ}, **(extra or {})}


def _pytest(session: nox.Session, *args: str, env: dict[str, str] | None = None) -> None:
    session.run("pytest", *args, *session.posargs, env=_pytest_env(env))


def _run_pytest_requiring_tests(
    session: nox.Session, what: str, *args: str, env: dict[str, str] | None = None, posargs: bool = True
) -> None:
    """Run pytest; exit code 5 ("no tests ran") fails the session with a message saying so."""
    try:
        session.run("pytest", *args, *(session.posargs if posargs else ()), env=_pytest_env(env))
    except nox.command.CommandFailed as exc:
        if getattr(exc, "return_code", None) == 5:
            session.error(f"{what}: pytest collected no tests (exit code 5); that is a failure, not a pass")
        raise


# Both runs use xdist, so they pass --benchmark-disable: pytest-benchmark cannot time reliably under
# xdist and may then emit a PytestBenchmarkWarning, which `filterwarnings = ["error"]` would turn
# into a failure. Benchmark tests still run their function once, as plain tests.
def _unit(session: nox.Session, env: dict[str, str] | None = None) -> None:
    _pytest(session, "tests/unit", "-n", "2", "--benchmark-disable", env=env)


def _integration(session: nox.Session, env: dict[str, str] | None = None) -> None:
    # loadgroup: tests marked @pytest.mark.xdist_group("name") run in the same worker process.
    # tests/conformance: the pool's behaviours on every harness layer (mock, bridge, subprocess).
    _pytest(
        session,
        "tests/integration",
        "tests/conformance",
        "-n",
        "2",
        "--dist",
        "loadgroup",
        "--benchmark-disable",
        env=env,
    )


def _event_catalog(session: nox.Session, directory: Path) -> None:
    """tests/catalog on its own, over what the runs before it recorded in ``directory``: every
    event of docs/telemetry.md was emitted, and every emitted event is documented. Without the
    variable the test would skip, and with no files in the directory it fails, so this run
    cannot pass vacuously. Extra arguments are not passed on: they are the other runs'."""
    _run_pytest_requiring_tests(
        session,
        "event catalog",
        "tests/catalog",
        "-p",
        "no:cacheprovider",
        env={CATALOG_ENV: str(directory)},
        posargs=False,
    )


@nox.session(python=PYTHON)
def unit(session: nox.Session) -> None:
    """Unit tests (no worker processes), two xdist workers."""
    session.install("-e", ".[test]")
    _unit(session)


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """Integration tests against real worker processes."""
    session.install("-e", ".[test]")
    _integration(session)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit then integration tests, one install, then the event catalog check.

    The catalog check (tests/catalog) compares the events both runs emitted with
    docs/telemetry.md. Extra args go to the unit and integration runs; with extra args the
    catalog may be partial, so the check is skipped, with a warning saying so."""
    session.install("-e", ".[test]")
    directory = Path(tempfile.mkdtemp(prefix="poolkit-event-catalog-"))
    env = {CATALOG_ENV: str(directory)}
    session.log(f"{CATALOG_ENV}={directory}: the runs record the events their pools emit there")
    _unit(session, env)
    _integration(session, env)
    if session.posargs:
        session.warn(
            f"event catalog check skipped: extra pytest arguments {session.posargs} may select a subset"
        )
    else:
        _event_catalog(session, directory)
    shutil.rmtree(directory, ignore_errors=True)  # kept when a run fails, to look at


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    session.install(_dev_requirement("ruff"))
    paths = [p for p in LINT_PATHS if (ROOT / p).exists()]
    session.run("ruff", "check", *session.posargs, *paths)
    session.run("ruff", "format", "--check", "--diff", *paths)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over src and tests (configured in pyproject.toml)."""
    session.install("-e", ".[dev]")
    session.run("mypy", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Run examples/demo.py against a real pool."""
    session.install("-e", ".")
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session(python=PYTHON)
def downstream(session: nox.Session) -> None:
    """examples/downstream: a project depending on poolkit tests its own workers with the plugin.

    poolkit is installed from this checkout (not editable: as a user gets it), then the example
    with its test extra; its tests run from its own directory, with its own pytest config and
    without anything from poolkit's tests/.
    """
    session.install(str(ROOT))
    session.install(f"{DOWNSTREAM}[test]")
    session.chdir(DOWNSTREAM)
    # no cacheprovider: leave no .pytest_cache in the example's directory.
    _run_pytest_requiring_tests(session, "downstream", "-p", "no:cacheprovider")


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """Chaos scenarios (tests/chaos, marker ``chaos``), one at a time, in a fixed order.

    No xdist: each scenario runs 3-5 real worker processes under a few hundred concurrent calls
    and asserts a recovery bound (back to min_workers within 15 s of the last fault). Two
    scenarios at once on a 2-core machine would put ~10 workers and 2 test processes on 2 cores,
    and a bound could then fail for a reason that is not the pool's. Serially the session takes
    about a minute, and a failing scenario's output is one stream. ``-p no:randomly`` keeps the
    order fixed if pytest-randomly is installed; ``--benchmark-disable`` as in the other runs.
    """
    if not CHAOS_DIR.is_dir() or not any(CHAOS_DIR.glob("test_*.py")):
        session.error(f"{CHAOS_DIR.relative_to(ROOT)}/ has no test_*.py files: no chaos scenarios to run")
    session.install("-e", ".[test]")
    _run_pytest_requiring_tests(
        session, "chaos", "tests/chaos", "-m", "chaos", "-p", "no:randomly", "--benchmark-disable"
    )


@nox.session(python=PYTHON)
def bench_telemetry(session: nox.Session) -> None:
    """What telemetry costs a call: off, a subscriber, an OpenTelemetry SDK (benchmarks/README.md).

    Not part of CI or the test suite, and not run by plain ``nox``. About two minutes on a
    2-core machine; writes benchmarks/results/telemetry.json. Extra arguments go to the script:
    ``nox -s bench_telemetry -- --quick --no-save`` for a ~20 s look without the JSON.
    """
    session.install("-e", ".[test]")  # opentelemetry-sdk is in the test extra
    session.run("python", "benchmarks/telemetry.py", *session.posargs)
