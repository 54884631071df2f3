"""The producing loop (rides.py's): send messages as fast as asked, count what the broker acknowledged.

    while not shutdown.requested and not enough acknowledged:
        wait while too many are in flight; pace to the rate
        producer.send(next messages), a burst    # acks=all, idempotent (common.clients)
    finally: flush (within the stop's 10 s), close, the summary line

A message counts as sent once send() takes it and as acknowledged only once the broker has stored it:
`acknowledged` in the summary is exactly what is in the topic.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator
from itertools import islice

from kafka.errors import KafkaTimeoutError

from common import clients, reachability, schemas
from common.settings import Settings
from common.shutdown import Shutdown

log = logging.getLogger(__name__)

# Rides sent and not yet acknowledged, at most: a few batches' worth keeps the producer busy, and far
# below what fills its 32 MB buffer.
MAX_IN_FLIGHT = 10_000
BURST = 500  # sends between two checks of the loop (stop request, Kafka lost, progress, pace)


class Deliveries:
    """Counts what the broker acknowledged. Callbacks run on the producer's I/O thread (or at once, on
    the main thread, when a send has already completed), hence the lock; `requested` is the main thread's
    alone."""

    def __init__(self) -> None:
        self.requested = 0  # sent
        self.acknowledged = 0
        self.failed = 0
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._final = False

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self.requested - self.acknowledged - self.failed

    def final(self) -> int:
        """Stop counting: sends abandoned from now on stay unacknowledged, not failed. Returns how many
        are unacknowledged."""
        with self._lock:
            self._final = True
            return self.requested - self.acknowledged - self.failed

    def sent(self, ride_id: uuid.UUID, future) -> None:
        self.requested += 1
        future.add_callback(self._ok).add_errback(self._failed, ride_id)

    def _ok(self, _metadata) -> None:
        with self._lock:
            if self._final:
                return
            self.acknowledged += 1
        if not self.changed.is_set():  # set() takes a lock and notifies: once per wait is enough
            self.changed.set()

    def _failed(self, ride_id: uuid.UUID, error: Exception) -> None:
        with self._lock:
            if self._final:
                return
            self.failed += 1
        self.changed.set()
        log.error("ride %s was not acknowledged (%s: %s); it is not counted and another ride replaces it",
                  ride_id, type(error).__name__, error)


def room_for(deliveries: Deliveries, count: int | None) -> int:
    """How many more messages may be sent now: the room under MAX_IN_FLIGHT, and no more than `count` still
    needs beyond what is acknowledged or on its way."""
    in_flight = deliveries.in_flight
    room = MAX_IN_FLIGHT - in_flight
    return room if count is None else min(room, count - deliveries.acknowledged - in_flight)


def run(settings: Settings, topic: str, messages: Iterator[schemas.RideRequest], count: int | None, rate: float,
        seed: int) -> int:
    """Send messages to `topic` (a common.topics name), keyed by ride_id, until `count` are acknowledged
    (None: until SIGINT/SIGTERM), at `rate` per second (0: as fast as the broker takes them). The seed the
    messages were made from is logged at the start and in the summary."""
    shutdown = Shutdown.on_signals()
    clients.ensure_topics(settings, shutdown)
    producer = clients.connect(settings, shutdown, lambda: clients.producer(settings, "rides"), "producer")
    topic = settings.topic(topic)
    log.info("producing rides to %s: count=%s rate=%s seed=%d", topic, count or "unlimited",
             f"{rate:g}/s" if rate else "max", seed)
    deliveries = Deliveries()
    started = time.monotonic()
    last_report = started
    try:
        while not shutdown.requested:
            reachability.check(producer)  # one line when Kafka is lost, one when it is back
            if time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                log.info("progress: requested=%d acknowledged=%d failed=%d", deliveries.requested,
                         deliveries.acknowledged, deliveries.failed)
            room = room_for(deliveries, count)
            if room <= 0:
                if count is not None and deliveries.acknowledged >= count:
                    break  # count reached: every message acknowledged
                # Too many in flight (Kafka is slow or away: wait for acks here, where a stop request is heard,
                # rather than in send(), which blocks for up to a minute once the producer's buffer is full),
                # or all the messages needed are on their way: wait for their acks (a failure reopens the loop).
                deliveries.changed.clear()
                if room_for(deliveries, count) <= 0:
                    deliveries.changed.wait(0.2)
                continue
            if rate:
                # Pace against the start time, not the last send, so that the average rate holds.
                elapsed = time.monotonic() - started
                if deliveries.requested / rate > elapsed:
                    if shutdown.sleep(deliveries.requested / rate - elapsed):
                        break
                    continue
                room = min(room, math.floor(elapsed * rate) + 1 - deliveries.requested)  # the rides due by now
            # A burst without the checks above, which cost about as much as a send: a stop request is still
            # heard within BURST sends (a few ms).
            for message in islice(messages, min(room, BURST)):
                future = producer.send(topic, key=schemas.ride_key(message.ride_id), value=schemas.encode(message))
                deliveries.sent(message.ride_id, future)
    finally:
        # Stop producing, then give the messages on their way a chance to be acknowledged, within the
        # 10 s a stop may take (Kafka may be unreachable: then they are abandoned).
        try:
            producer.flush(timeout=6)
        except KafkaTimeoutError:
            pass
        unacknowledged = deliveries.final()
        clients.close_producer(producer, timeout=1)
        if unacknowledged:
            log.warning("%d rides unacknowledged at exit: Kafka did not confirm storing them, so they may or may "
                        "not be in %s; not counted as acknowledged", unacknowledged, topic)
        elapsed = max(time.monotonic() - started, 1e-9)
        log.info("summary: requested=%d acknowledged=%d failed=%d unacknowledged=%d rate=%.1f/s seconds=%.2f "
                 "seed=%d", deliveries.requested, deliveries.acknowledged, deliveries.failed, unacknowledged,
                 deliveries.acknowledged / elapsed, elapsed, seed)
    return 0
