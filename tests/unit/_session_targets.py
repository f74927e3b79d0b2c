"""Session-aware call targets for the in-process layers (mock and bridge), used by the pool
recovery, session and recycling unit tests.

They are here, not in a ``test_*.py`` file, because workers resolve targets by module name.
Like :mod:`unit._targets`, they run in the test's own event loop and share its module state:
:func:`gated_remember` waits on a :func:`unit._targets.new_gate` gate, so a test can hold a
session's call running for as long as it needs, without sleeping.
"""

from __future__ import annotations

from typing import Any

from poolkit.testing.targets import remember
from unit._targets import wait_for

__all__ = ["gated_remember"]


async def gated_remember(key: str, value: Any, *, session: Any) -> list[Any]:
    """Wait for ``GATES[key]`` to be released, then ``remember(value)`` in the session's state
    and return everything the session remembered on this worker."""
    await wait_for(key)
    return remember(value, session=session)
