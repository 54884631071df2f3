"""Graceful shutdown: SIGINT and SIGTERM only set a flag; the script's loop ends and `finally` cleans up."""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)


class Shutdown:
    """A flag the loop checks between batches; a second signal exits at once for the impatient."""

    def __init__(self) -> None:
        self._event = threading.Event()

    @classmethod
    def on_signals(cls) -> Shutdown:
        shutdown = cls()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, shutdown._handle)
        return shutdown

    def _handle(self, signum: int, _frame: object) -> None:
        if self._event.is_set():
            log.warning("second %s: exiting now, without a final commit", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s received: finishing the current batch, then stopping", signal.Signals(signum).name)
        self._event.set()

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep unless asked to stop meanwhile; True if a stop was requested."""
        return self._event.wait(seconds)
