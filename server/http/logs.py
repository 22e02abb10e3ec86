"""Logging that stays readable when a flood of events each want a line."""

from __future__ import annotations

import logging
import time
from typing import Any

# At most one line per this many seconds about running out of descriptors, or about
# connections refused; each says how many events it stands for.
RESOURCE_LOG_SECONDS = 60.0
REFUSAL_LOG_SECONDS = 60.0


class ThrottledLog:
    """A warning that an attacker can trigger at will, logged at most once per interval.

    Each line after the first counts the events left out since the one before.
    """

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self.logger = logger
        self.interval = interval
        self._next = 0.0
        self._left_out = 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._left_out += 1
            return
        if self._left_out:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, self._left_out, self.interval)
        self.logger.warning(message, *args)
        self._next = now + self.interval
        self._left_out = 0
