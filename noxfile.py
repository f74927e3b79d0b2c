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
# Every session runs on 3.11: without that interpreter nox would skip them all and exit 0
# having tested nothing (it fails only under CI=true). Fail everywhere instead.
nox.options.error_on_missing_interpreters = True

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


def _performance(session: nox.Session, env: dict[str, str] | None = None) -> None:
    # tests/performance, serially (no xdist: the load SLA tests time real workers on 2 cores):
    # the load SLA tests at their short scale (POOLKIT_LOAD_SCALE unset: ~12 s of load per backend)
    # and each gate benchmark run once as a plain test (--benchmark-disable), so the gate's code
    # keeps working between `nox -s perf` runs. About 45 s. tests/performance/README.md.
    _pytest(session, "tests/performance", "-p", "no:randomly", "--benchmark-disable", env=env)


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
    """Unit, integration, then performance tests (serially: the short load SLA tests and the
    gate's benchmarks run once), one install, then the event catalog check.

    The catalog check (tests/catalog) compares the events the runs emitted with
    docs/telemetry.md. Extra args go to the unit, integration and performance runs; with extra
    args the catalog may be partial, so the check is skipped, with a warning saying so."""
    session.install("-e", ".[test]")
    directory = Path(tempfile.mkdtemp(prefix="poolkit-event-catalog-"))
    env = {CATALOG_ENV: str(directory)}
    session.log(f"{CATALOG_ENV}={directory}: the runs record the events their pools emit there")
    _unit(session, env)
    _integration(session, env)
    _performance(session, env)
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


@nox.session(python=PYTHON)
def peers(session: nox.Session) -> None:
    """poolkit side by side with its peers: throughput, latency, recovery, startup, memory
    (benchmarks/peers.py; figures in docs/performance.md).

    Not part of CI or the test suite, and not run by plain ``nox``. About 16 minutes on a
    2-core machine; writes benchmarks/results/peers.json. Extra arguments go to the script:
    ``nox -s peers -- --quick --no-save`` for a ~3.5 minute look without the JSON;
    ``nox -s peers -- --only poolkit raw throughput`` for some systems and workloads.
    """
    session.install("-e", ".[test,bench]")  # bench: loky, pebble, aiomultiprocess, mpire
    session.run("python", "benchmarks/peers.py", *session.posargs)


@nox.session(python=PYTHON)
def bench_scheduler(session: nox.Session) -> None:
    """Dispatch cost at 2 to 256 workers, and the ratio issue 6 bounds (benchmarks/README.md).

    Not part of CI or the test suite, and not run by plain ``nox``. About a minute; writes
    benchmarks/results/scheduler_scaling.json. Extra arguments go to the script:
    ``nox -s bench_scheduler -- --quick --no-save`` for a ~20 s look without the JSON.
    """
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/scheduler_scaling.py", *session.posargs)


# The regression gate (tests/performance/README.md): the benchmarks' medians against the baseline
# stored in the repo. A benchmark whose median is more than PERF_MAX_SLOWDOWN slower fails the
# session. Chosen above the run-to-run spread measured on the 2-core development VM, with margin.
PERF_BASELINE = ROOT / "tests" / "performance" / "baseline"
PERF_MAX_SLOWDOWN = "median:50%"
PERF_BASELINE_RUNS = 3  # --save-baseline keeps each benchmark's fastest of this many runs
_GATE_ARGS = ["tests/performance", "-m", "benchmark", "-p", "no:randomly", "-p", "no:xdist"]


@nox.session(python=PYTHON)
def perf(session: nox.Session) -> None:
    """The performance regression gate, then the load SLA tests at full scale (5 minutes sustained).

    Not part of CI or the test suite, and not run by plain ``nox``. About 15 minutes on a 2-core
    machine (the gate ~1, the load tests ~14); run it on a quiet one (``uptime``). Both runs are serial (no xdist). The gate fails
    when a benchmark's median is more than PERF_MAX_SLOWDOWN slower than the baseline in
    tests/performance/baseline/ in two runs in a row (the second only runs if the first fails);
    the load run fails on any missed SLA.

    ``nox -s perf -- --save-baseline`` runs the benchmarks three times and replaces the baseline
    with each benchmark's fastest run (tests/performance/baseline.py; ~4 minutes; commit the new
    file); ``--gate-only`` and ``--load-only`` run one of the two parts.
    Other extra arguments go to pytest (both runs).
    """
    session.install("-e", ".[test]")
    flags = {"--save-baseline", "--gate-only", "--load-only"}
    args = [a for a in session.posargs if a not in flags]
    given = set(session.posargs) & flags
    storage = ["--benchmark-storage", str(PERF_BASELINE)]
    session.log(f"load average: {_loadavg()}")
    if "--save-baseline" in given:  # each benchmark's fastest of PERF_BASELINE_RUNS runs
        directory = Path(tempfile.mkdtemp(prefix="perf-baseline-"))
        runs = [str(directory / f"run{i}.json") for i in range(1, PERF_BASELINE_RUNS + 1)]
        for run in runs:
            session.run("pytest", *_GATE_ARGS, f"--benchmark-json={run}", *args, env=_pytest_env())
        session.run("python", "tests/performance/baseline.py", "--storage", str(PERF_BASELINE), *runs)
        shutil.rmtree(directory, ignore_errors=True)
        return
    baselines = sorted(PERF_BASELINE.glob("*/[0-9][0-9][0-9][0-9]_baseline.json"))
    if not baselines and "--load-only" not in given:
        session.error(
            f"no baseline in {PERF_BASELINE.relative_to(ROOT)}: run `nox -s perf -- --save-baseline`"
        )
    gate_failed: nox.command.CommandFailed | None = None
    directory = Path(tempfile.mkdtemp(prefix="perf-gate-"))
    for attempt in (1, 2) if "--load-only" not in given else ():  # best of two: see the docstring
        figures = directory / f"gate{attempt}.json"
        try:
            session.run(
                "pytest",
                *_GATE_ARGS,
                *storage,
                f"--benchmark-compare={baselines[-1]}",
                f"--benchmark-compare-fail={PERF_MAX_SLOWDOWN}",
                f"--benchmark-json={figures}",
                *args,
                env=_pytest_env(),
            )
        except nox.command.CommandFailed as exc:  # still run the load tests: both results are wanted
            gate_failed = exc
            if figures.exists():  # each median against the baseline's, the reference rows included
                session.run(
                    "python", "tests/performance/spread.py", str(figures), "--baseline", str(baselines[-1])
                )
            session.warn(
                f"the gate failed (load average {_loadavg()}); if the reference benchmarks are much slower "
                "than their baseline too, the machine was busy (tests/performance/README.md)"
                + ("; running it once more" if attempt == 1 else "")
            )
        else:
            gate_failed = None
            break
    shutil.rmtree(directory, ignore_errors=True)
    if "--gate-only" not in given:
        session.run(
            "pytest",
            "tests/performance",
            "-m",
            "load",
            "-p",
            "no:randomly",
            "-p",
            "no:xdist",
            "--benchmark-disable",
            *args,
            env=_pytest_env({"POOLKIT_LOAD_SCALE": "full"}),
        )
    session.log(f"load average: {_loadavg()}")
    if gate_failed is not None:
        session.error(
            f"the regression gate failed (a median more than {PERF_MAX_SLOWDOWN} slower, or an error)"
        )


def _loadavg() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
    except OSError:
        return "unknown"


@nox.session(python=PYTHON)
def bench_replacement(session: nox.Session) -> None:
    """Worker replacement after a SIGKILL and memory at rest, start_method exec vs zygote
    (benchmarks/replacement.py; docs/architecture.md, "Start methods").

    Not part of CI or the test suite, and not run by plain ``nox``. About 10 seconds on a 2-core
    machine; writes benchmarks/results/replacement.json. Extra arguments go to the script:
    ``nox -s bench_replacement -- --quick --no-save`` for a look without the JSON.
    """
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/replacement.py", *session.posargs)


@nox.session(python=PYTHON)
def bench_mixed(session: nox.Session) -> None:
    """Fast calls mixed with slow ones: the adaptive pipeline window against a fixed depth
    (benchmarks/mixed.py; docs/architecture.md).

    Not part of CI or the test suite, and not run by plain ``nox``. About a minute; writes
    benchmarks/results/mixed.json. ``nox -s bench_mixed -- --quick --no-save`` for a look.
    """
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/mixed.py", *session.posargs)
