"""structlog loggers that print nothing by default beyond warnings.

poolkit is a library: it must not configure logging for its users. These loggers are
structlog's stdlib-bound loggers over ``logging.getLogger("poolkit...")``, which has no
handler until the application adds one, so only WARNING and above reach Python's
last-resort handler. Worker output (print, stderr) is logged at INFO, tagged with the
worker id and pid, and is therefore silent unless the application asks for it.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["get_logger"]


def get_logger(name: str = "poolkit", **initial: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.wrap_logger(
        logging.getLogger(name),
        wrapper_class=structlog.stdlib.BoundLogger,
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.stdlib.render_to_log_kwargs,
        ],
    )
    return logger.bind(**initial) if initial else logger
