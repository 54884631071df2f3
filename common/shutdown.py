"""Graceful shutdown: SIGINT and SIGTERM only set a flag; the script's loop ends and `finally` cleans up.

A stop has a deadline. While Kafka is unreachable, a final commit (or commit_transaction(), which in
kafka-python has no timeout) can block for as long as the outage lasts; past STOP_DEADLINE seconds the
script exits with status 1 and one line saying so. That is as safe as the SIGKILL every script is tested
against (tests/integration/test_chaos.py): what was not committed is processed again by the next run.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

# docs/architecture.md (contracts): a script exits within 10 s of SIGINT/SIGTERM; a second is left for the
# interpreter to exit.
STOP_DEADLINE = 9.0


class Shutdown:
    """A flag the loop checks between batches; a second signal exits at once for the impatient."""

    def __init__(self, deadline: float = STOP_DEADLINE) -> None:
        self._event = threading.Event()
        self._deadline = deadline

    @classmethod
    def on_signals(cls, deadline: float = STOP_DEADLINE) -> Shutdown:
        shutdown = cls(deadline)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, shutdown._handle)
        return shutdown

    def _handle(self, signum: int, _frame: object) -> None:
        if self._event.is_set():
            log.warning("second %s: exiting now, without a final commit", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s received: finishing the current batch, then stopping", signal.Signals(signum).name)
        self._event.set()
        overdue = threading.Timer(self._deadline, self._overdue, args=(signal.Signals(signum).name,))
        overdue.daemon = True  # a stop that finishes in time exits without waiting for it
        overdue.start()

    def _overdue(self, signame: str) -> None:
        log.error("not stopped %.0f s after %s (is Kafka unreachable?): exiting without the final commit; "
                  "the next run processes what was not committed", self._deadline, signame)
        logging.shutdown()
        os._exit(1)

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep unless asked to stop meanwhile; True if a stop was requested."""
        return self._event.wait(seconds)
