"""Say once when Kafka becomes unreachable in mid-stream and once when it is back, not once per retry.

kafka-python reconnects by itself and reports nothing (common.cli silences its own logs), so without this
a broker lost in mid-stream is silent. Every loop calls check(client) once per pass: the consumers
through common.consume.poll_batch, rides.py from its own loop.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from datetime import datetime, timezone

from kafka import KafkaProducer

log = logging.getLogger(__name__)

# An outage shorter than this is not reported: a broker that hands over a connection, or one refused
# reconnection while it restarts, is not worth a line.
GRACE = 2.0


class Reachability:
    """What one client last knew about Kafka, and what it has already said about it."""

    def __init__(self, where: str, grace: float = GRACE, clock: Callable[[], float] = time.monotonic) -> None:
        self.where = where
        self.grace = grace
        self.clock = clock
        # When Kafka was first seen unreachable (clock, wall clock); None while reachable.
        self.lost: tuple[float, datetime] | None = None
        self.warned = False

    def update(self, reachable: bool | None) -> None:
        """reachable: True (connected), False (unreachable), None (cannot tell: leaves things as they are)."""
        if reachable is None:
            return
        now = self.clock()
        if reachable:
            if self.warned and self.lost:
                log.info("Kafka is back at %s after %.0f s", self.where, now - self.lost[0])
                _tell(self, True)
            self.lost, self.warned = None, False
        elif self.lost is None:
            self.lost = now, datetime.now(timezone.utc)
        elif not self.warned and now - self.lost[0] >= self.grace:
            self.warned = True
            log.warning("Kafka is unreachable at %s (since %s); waiting for it", self.where,
                        self.lost[1].strftime("%H:%M:%S"))
            _tell(self, False)


# Who else hears what the lines say (common.metrics: /healthz and the reconnect counter): callback(state,
# False) once a client's Kafka is said to be lost, callback(state, True) once it is said to be back; `state`
# tells the clients apart (a script's consumer and producer each have one).
_listeners: list[Callable[[object, bool], None]] = []


def listen(callback: Callable[[object, bool], None]) -> Callable[[], None]:
    """Call callback(state, reachable) whenever a lost or back line is logged; returns what stops it."""
    _listeners.append(callback)
    return lambda: _listeners.remove(callback)


def _tell(state: Reachability, reachable: bool) -> None:
    for callback in list(_listeners):
        callback(state, reachable)


def reachable(client) -> bool | None:
    """True if the client has a live connection to a broker; False if it has none and its last attempt to
    connect failed; None otherwise (say, an idle connection closed after connections.max.idle.ms, with no
    attempt since: that is no outage).

    Reads kafka-python 3.0.12's connection manager (pinned; it has no public "connected" signal: the
    connection-count metric is also 0 after an idle close).
    """
    manager = client._sender._client._manager if isinstance(client, KafkaProducer) else client._manager
    if any(conn.connected for conn in list(manager._conns.values())):
        return True
    if manager._backoff:  # a node whose connection attempt failed since its last success
        return False
    return None


_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def said_lost(client) -> bool:
    """Whether the last line said of this client is that Kafka is unreachable."""
    state = _states.get(client)
    return state is not None and state.warned


def check(client) -> None:
    """Log one WARNING when the client loses Kafka, one INFO when it is back; call it once per loop."""
    state = _states.get(client)
    if state is None:
        servers = client.config["bootstrap_servers"]
        state = _states[client] = Reachability(servers if isinstance(servers, str) else ",".join(servers))
    state.update(reachable(client))
