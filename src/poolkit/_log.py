"""structlog loggers that print nothing by default beyond warnings.

poolkit is a library: it must not configure logging for its users, and it must fit the
logging they configured. So each log call goes one of two ways, decided when it is made:

* the application configured structlog (``structlog.is_configured()``): the entry goes
  through structlog's global configuration, so the application's processors, renderer and
  level filter apply, and ``structlog.testing.capture_logs`` sees it;
* otherwise: structlog's stdlib-bound logger over ``logging.getLogger("poolkit...")``, which
  has no handler until the application adds one, so only WARNING and above reach Python's
  last-resort handler.

Loggers are bound with the pool's name and, where they apply, the worker id, pid and call
number (``docs/telemetry.md``). Worker output (print, stderr) is logged at INFO, so it is
silent unless the application asks for it.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["Logger", "get_logger"]


class Logger:
    """A bound logger that picks its route per call (module docstring). Cheap to bind."""

    __slots__ = ("_context", "_name", "_std")

    def __init__(self, name: str, context: dict[str, Any]) -> None:
        self._name = name
        self._context = context
        self._std: structlog.stdlib.BoundLogger | None = None

    def bind(self, **values: Any) -> Logger:
        return Logger(self._name, {**self._context, **values})

    def enabled(self, level: int) -> bool:
        """Could an entry at ``level`` be output? Cheap, so callers can skip building one.
        With structlog configured, structlog's own filter decides later: True here."""
        if structlog.is_configured():
            return True
        return logging.getLogger(self._name).isEnabledFor(level)

    def _route(self) -> Any:
        if structlog.is_configured():
            return structlog.get_logger(self._name, **self._context)
        std = self._std
        if std is None:
            std = self._std = structlog.wrap_logger(
                logging.getLogger(self._name),
                wrapper_class=structlog.stdlib.BoundLogger,
                processors=[
                    structlog.stdlib.filter_by_level,
                    _fields_for_last_resort,
                    structlog.processors.TimeStamper(fmt="iso"),
                    structlog.stdlib.render_to_log_kwargs,
                ],
            ).bind(**self._context)
        return std

    def debug(self, event: str, **kw: Any) -> None:
        self._route().debug(event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._route().info(event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._route().warning(event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._route().error(event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._route().exception(event, **kw)

    def log(self, level: int, event: str, **kw: Any) -> None:
        self._route().log(level, event, **kw)


def _fields_for_last_resort(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """With no handler configured anywhere, Python's last-resort handler prints the message
    alone: "pool state changed", without the pool, the states or the reason. Then the
    fields go into the message itself; an application that added a handler gets them as
    record attributes, as before."""
    if isinstance(logger, logging.Logger) and not logger.hasHandlers():
        fields = " ".join(f"{key}={value!r}" for key, value in event_dict.items() if key != "event")
        if fields:
            event_dict["event"] = f"{event_dict.get('event')}: {fields}"
    return event_dict


def get_logger(name: str = "poolkit", **initial: Any) -> Logger:
    return Logger(name, initial)
