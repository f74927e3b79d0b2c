"""Where a target is running: in a real worker process, or in-process (mock and bridge layers).

Layer-agnostic targets (``poolkit.testing.targets``) read :data:`in_process` to do the real
thing in each place: SIGKILL themselves in a process, raise :class:`FakeExit` in-process;
block the process in ``time.sleep``, or ``await`` an anyio sleep without blocking the loop.
It is a ContextVar: test ``in_process.get()`` (the variable itself is always truthy).

Real worker processes import this module (through your targets): it must stay standard
library only, and ``poolkit.testing``'s lazy ``__init__`` keeps importing it from pulling in
pytest or the rest of the harness.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

__all__ = ["FakeExit", "freeze_hook", "in_process"]

#: True while a mock or bridge worker runs a target (set in that worker's task context); read
#: it with ``in_process.get()``.
in_process: ContextVar[bool] = ContextVar("poolkit_in_process", default=False)

#: Set by a mock or bridge worker: makes that fake worker stop answering anything (heartbeats
#: included), as SIGSTOP does to a real one. ``targets.freeze`` calls it in-process.
freeze_hook: ContextVar[Callable[[], None] | None] = ContextVar("poolkit_freeze_hook", default=None)


class FakeExit(BaseException):
    """Raised by a target to end its in-process worker with ``returncode``.

    Negative codes mean "killed by that signal", as subprocess reports it (-9: SIGKILL,
    -11: SIGSEGV). A BaseException so that user-style ``except Exception`` cannot catch it.
    """

    def __init__(self, returncode: int) -> None:
        super().__init__(returncode)
        self.returncode = returncode
