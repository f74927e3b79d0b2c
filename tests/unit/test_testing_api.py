"""poolkit.testing's public surface: __all__ is complete and sorted, every name resolves lazily,
and importing what worker processes import loads neither pytest nor the heavy harness modules."""

from __future__ import annotations

import subprocess
import sys

import pytest

import poolkit.testing
from poolkit.testing import _EXPORTS


def _order(name: str) -> tuple[int, str]:
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def test_all_is_sorted_and_matches_the_lazy_table() -> None:
    """__all__ is sorted as ruff's RUF022 keeps it, has no duplicates, and lists exactly the
    lazily exported names plus the ``targets`` submodule."""
    names = poolkit.testing.__all__
    assert names == sorted(names, key=_order)
    assert len(names) == len(set(names))
    assert set(names) == {*_EXPORTS, "targets"}


@pytest.mark.parametrize("name", sorted(poolkit.testing.__all__))
def test_every_public_name_resolves_to_its_private_modules_object(name: str) -> None:
    """Each name is an attribute of poolkit.testing, the very object of its defining module."""
    value = getattr(poolkit.testing, name)
    assert value is not None
    if name != "targets":
        module = sys.modules[f"poolkit.testing{_EXPORTS[name]}"]
        assert getattr(module, name) is value


def test_dir_and_unknown_names() -> None:
    """dir() lists the public names; an unknown name raises AttributeError naming it."""
    assert set(poolkit.testing.__all__) <= set(dir(poolkit.testing))
    with pytest.raises(AttributeError, match="no_such_name"):
        poolkit.testing.no_such_name  # noqa: B018


_HEAVY = ("pytest", "anyio", "pydantic", "poolkit._pool", "poolkit.testing._plugin")


def _run(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "module",
    [
        "poolkit.testing._context",
        "poolkit.testing._worker_faults",
        "poolkit.testing.targets",
        "poolkit.testing",
    ],
)
def test_worker_side_imports_are_light(module: str) -> None:
    """A worker process importing the harness's target-side modules (your own layer-agnostic
    targets import ``_context``; FaultInjector's calls import ``_worker_faults`` and ``targets``)
    loads neither pytest nor the pool machinery: the package's re-exports are lazy."""
    _run(
        f"import sys; import {module}; loaded = [m for m in {_HEAVY!r} if m in sys.modules]; assert not loaded, loaded"
    )


def test_worker_side_imports_work_without_pytest_installed() -> None:
    """Where pytest is not installed (a production worker image), ``_context`` and ``targets``
    still import, and ``in_process`` reads False there."""
    _run(
        "import sys; sys.modules['pytest'] = None  # 'import pytest' now fails as if not installed\n"
        "from poolkit.testing._context import in_process\n"
        "from poolkit.testing import targets\n"
        "assert in_process.get() is False and targets.echo(1) == 1"
    )


def test_harness_names_resolve_without_pytest() -> None:
    """A script using the harness outside pytest: Isolation and PoolFactory (the fixtures'
    types), and every other public name, resolve without importing pytest or the plugin."""
    _run(
        "import sys\n"
        "import poolkit.testing\n"
        "poolkit.testing.Isolation, poolkit.testing.PoolFactory\n"
        "loaded = [m for m in ('pytest', 'poolkit.testing._plugin') if m in sys.modules]\n"
        "assert not loaded, ('Isolation/PoolFactory', loaded)\n"
        "for name in poolkit.testing.__all__:\n"
        "    getattr(poolkit.testing, name)\n"
        "loaded = [m for m in ('pytest', 'poolkit.testing._plugin') if m in sys.modules]\n"
        "assert not loaded, ('__all__', loaded)"
    )


def test_harness_names_work_without_pytest_installed() -> None:
    """Where pytest is not installed, Isolation and PoolFactory still import and work."""
    _run(
        "import sys; sys.modules['pytest'] = None  # 'import pytest' now fails as if not installed\n"
        "from poolkit.testing import Isolation, LeakCheck, PoolFactory\n"
        "isolation = Isolation(tag='t', name='n', leak_check=LeakCheck('t'))\n"
        "assert isolation.killed == [] and PoolFactory is not None"
    )


def test_exit_if_pid_does_not_exit_another_process() -> None:
    """crash(how="exit")'s worker-side target only exits the worker it was aimed at: anywhere
    else (a requeued call landing on another worker) it returns False."""
    from poolkit.testing._worker_faults import exit_if_pid

    assert exit_if_pid(-1, 3) is False
