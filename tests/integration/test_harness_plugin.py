"""The pytest plugin as a downstream project sees it, run in an inner pytest session (pytester):
layer selection, leak detection with teardown kill, and a timed-out test not affecting the next."""

from __future__ import annotations

import pytest

from _util import pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("processes")]

LEAKY = """
import os, subprocess, sys, threading
import pytest
from poolkit.testing import TAG_ENV

def _spawn_tagged(tag):
    env = {**os.environ, TAG_ENV: tag}
    # a dummy child that must outlive the test (the leak under test), not a wait
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env,  # sleep-ok
                            start_new_session=True)
    with open(os.environ["POOLKIT_TEST_PIDFILE"], "a") as f:
        f.write(f"{proc.pid}\\n")

def test_leaves_a_tagged_process(poolkit_isolation):
    _spawn_tagged(poolkit_isolation.tag)

@pytest.mark.timeout(2)
def test_times_out_with_a_process_running(poolkit_isolation):
    _spawn_tagged(poolkit_isolation.tag)
    threading.Event().wait()  # hangs until pytest-timeout ends the test

def test_next_test_is_clean(poolkit_isolation):
    from poolkit.testing import tagged_processes
    assert tagged_processes(poolkit_isolation.tag) == []
"""


def _pids(path: str) -> list[int]:
    with open(path, encoding="ascii") as f:
        return [int(line) for line in f if line.strip()]


def test_leaked_processes_are_killed_and_reported_and_a_timeout_does_not_spill(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test that leaves a tagged process fails at teardown with the leak listed, and the process
    is killed; a test that times out with a process running has it killed too; the next test
    starts clean."""
    pidfile = str(pytester.path / "pids.txt")
    monkeypatch.setenv("POOLKIT_TEST_PIDFILE", pidfile)
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=1, errors=2)
    result.stdout.fnmatch_lines(["*poolkit leak check failed*", "*killed 1 worker process(es) left running*"])
    result.stdout.fnmatch_lines(["*Timeout*"])
    pids = _pids(pidfile)
    assert len(pids) == 2
    assert not any(pid_alive(pid) for pid in pids)


LAYERED = """
import pytest
from poolkit.testing import Layer

def test_runs_per_layer(poolkit_layer):
    assert isinstance(poolkit_layer, Layer)

@pytest.mark.poolkit_layers("mock", "subprocess")
def test_marker_narrows(poolkit_layer):
    assert poolkit_layer is not Layer.BRIDGE
"""


def test_layers_are_chosen_per_run_and_per_test(pytester: pytest.Pytester) -> None:
    """A test taking poolkit_layer runs once per layer; --poolkit-layers narrows the run and the
    poolkit_layers marker narrows one test (skipped when no layer is left); an unknown layer is a
    usage error."""
    pytester.makepyfile(test_layered=LAYERED)
    every = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", "--strict-markers")
    every.assert_outcomes(passed=5)
    every.stdout.fnmatch_lines(["*test_runs_per_layer?mock?*", "*test_runs_per_layer?bridge?*"])
    some = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--poolkit-layers=bridge")
    some.assert_outcomes(passed=1, skipped=1)  # the marked test has no layer left in this run
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--poolkit-layers=quantum")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR


TYPO = """
import pytest

@pytest.mark.poolkit_layers("subproc")
def test_misspelled(poolkit_layer):
    pass
"""


def test_a_misspelled_layer_in_the_marker_is_a_clean_collection_error(pytester: pytest.Pytester) -> None:
    """@pytest.mark.poolkit_layers with an unknown layer fails collection with a message naming
    the test and the valid layers, not an enum traceback from inside the plugin."""
    pytester.makepyfile(test_typo=TYPO)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error stops the run
    result.stdout.fnmatch_lines(
        [
            "*test_misspelled: @pytest.mark.poolkit_layers got unknown layer(s) 'subproc'; "
            "valid layers: mock, bridge, subprocess*"
        ]
    )
    assert "Traceback" not in result.stdout.str() and "is not a valid Layer" not in result.stdout.str()
