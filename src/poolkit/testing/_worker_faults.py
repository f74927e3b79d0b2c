"""Worker-side targets of :class:`~poolkit.testing.FaultInjector`: what runs inside the worker.

:meth:`FaultInjector.crash` with ``how="exit"`` routes a call to ``exit_if_pid`` here (its other
worker-side calls, ``hang`` and ``grow_memory``, go to :mod:`poolkit.testing.targets`). A real
worker process imports this module to run that call, so it must stay standard library only:
importing ``poolkit.testing._faults`` instead would load the pool machinery (``poolkit._pool``,
anyio, pydantic) into the worker being crashed. ``poolkit.testing``'s lazy ``__init__`` keeps
the package import light too.
"""

from __future__ import annotations

import os

__all__ = ["exit_if_pid"]


def exit_if_pid(pid: int, code: int) -> bool:
    """Target routed by ``crash(how="exit")``: ``os._exit(code)`` if this is worker ``pid``.

    Returns False without exiting anywhere else (a call routed to a worker that died first
    is requeued by the pool and could land on another worker).
    """
    if os.getpid() != pid:
        return False
    os._exit(code)
