"""The producing loop (rides.py's): send messages as fast as asked, count what the broker acknowledged.

    while not shutdown.requested and not enough acknowledged:
        wait while too many are in flight; pace to the rate
        producer.send(next messages), a burst    # acks=all, idempotent (common.clients)
    finally: flush (within the stop's 10 s), close, the summary line

A message counts as sent once send() takes it and as acknowledged only once the broker has stored it:
`acknowledged` in the summary is exactly what is in the topic.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from itertools import islice

from kafka.errors import KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata as Future

from common import clients, loop, reachability
from common.settings import ServiceSettings
from common.shutdown import Shutdown

log = logging.getLogger(__name__)

# Rides sent and not yet acknowledged, at most: a few batches' worth keeps the producer busy, and far
# below what fills its 32 MB buffer.
MAX_IN_FLIGHT = 10_000
BURST = 500  # sends between two checks of the loop (stop request, Kafka lost, progress, pace)


class Deliveries:
    """Counts what the broker acknowledged, on the main thread alone: the sends' futures are kept in the
    order of sending and the done ones at the head are counted whenever the loop looks. No callback per
    send: two per send (ack and error), run on the producer's I/O thread under a lock, held the GIL the
    sends need. A send done behind one still on its way counts as in flight until the head is done (a few
    ms: batches are acknowledged in about the order they were sent)."""

    def __init__(self) -> None:
        self.requested = 0  # sent
        self._acknowledged = 0
        self._failed = 0
        self._pending: deque[tuple[Future, bytes]] = deque()  # (future, key) of each send not yet counted
        self._final = False

    @property
    def acknowledged(self) -> int:
        self._count_done()
        return self._acknowledged

    @property
    def failed(self) -> int:
        self._count_done()
        return self._failed

    @property
    def in_flight(self) -> int:
        self._count_done()
        return len(self._pending)

    def counts(self) -> dict[str, int]:
        """What is counted so far, without counting (safe from another thread: the metrics server's)."""
        return {"requested": self.requested, "acknowledged": self._acknowledged, "failed": self._failed}

    def sent(self, key: bytes, future: Future) -> None:
        self.requested += 1
        self._pending.append((future, key))

    def wait(self, timeout: float) -> None:
        """Wait up to `timeout` s for the oldest send in flight to be done."""
        if self._pending:
            with contextlib.suppress(Exception):  # a failure is counted and logged by _count_done
                self._pending[0][0].get(timeout)
        self._count_done()

    def final(self) -> int:
        """Count every send done by now, and stop counting: those abandoned from now on stay unacknowledged,
        not failed. Returns how many are unacknowledged."""
        still: deque[tuple[Future, bytes]] = deque()
        for future, key in self._pending:
            if future.is_done:
                self._count(future, key)
            else:
                still.append((future, key))
        self._pending, self._final = still, True
        return len(still)

    def _count_done(self) -> None:
        pending = self._pending
        while pending and pending[0][0].is_done and not self._final:
            self._count(*pending.popleft())

    def _count(self, future: Future, key: bytes) -> None:
        if future.exception is None:
            self._acknowledged += 1
            return
        self._failed += 1
        log.error("ride %s was not acknowledged (%s: %s); it is not counted and another ride replaces it",
                  key.decode(errors="replace"), type(future.exception).__name__, future.exception)


def room_for(deliveries: Deliveries, count: int | None) -> int:
    """How many more messages may be sent now: the room under MAX_IN_FLIGHT, and no more than `count` still
    needs beyond what is acknowledged or on its way."""
    in_flight = deliveries.in_flight
    room = MAX_IN_FLIGHT - in_flight
    return room if count is None else min(room, count - deliveries.acknowledged - in_flight)


def run(settings: ServiceSettings, topic: str, records: Iterator[tuple[bytes, bytes]], count: int | None,
        rate: float, seed: int) -> int:
    """Send records, (key, value) pairs keyed by ride_id, to `topic` (a common.topics name) until `count` are
    acknowledged (None: until SIGINT/SIGTERM), at `rate` per second (0: as fast as the broker takes them). The
    seed the records were made from is logged at the start and in the summary."""
    shutdown = Shutdown.on_signals()
    deliveries = Deliveries()
    watch = loop.watch(settings)  # first: a metrics port in use stops the script before Kafka is asked
    if watch:
        watch.count(deliveries.counts, {key: key for key in ("requested", "acknowledged", "failed")})
    try:
        clients.ensure_topics(settings, shutdown)
        topic = settings.topic(topic)
        producer = clients.connect(settings, shutdown, lambda: clients.producer(settings, "rides",
                                                                                writes_to=[topic]), "producer")
    except BaseException:
        if watch:
            watch.stop()
        raise
    log.info("producing rides to %s: count=%s rate=%s seed=%d", topic, count or "unlimited",
             f"{rate:g}/s" if rate else "max", seed)
    unlisten = reachability.listen(watch.kafka) if watch else None
    started = time.monotonic()
    last_report = started
    try:
        while not shutdown.requested:
            reachability.check(producer)  # one line when Kafka is lost, one when it is back
            if watch:
                watch.health.beat()
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
                deliveries.wait(0.2)
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
            for key, value in islice(records, min(room, BURST)):
                deliveries.sent(key, producer.send(topic, key=key, value=value))
    finally:
        if watch:
            watch.stopping("asked to stop (SIGINT/SIGTERM)" if shutdown.requested else "done")
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
        if watch:
            unlisten and unlisten()
            watch.stop()
    return 0
