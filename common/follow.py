"""api.py's follower: a thread that reads the pipeline's topics into its View (common.view), and each consumer
group's lag.

It reads without a consumer group (every API instance reads every partition and keeps the same view) and with
isolation_level=read_committed (an outcome exists once transaction.py's transaction committed it). It starts
`history` back in time on the ride topics, so a restarted API still knows the rides of the last while, and
at the beginning of ride_stats, compacted to the latest snapshot per analysis group.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, KafkaTimeoutError

from common import clients, consume, schemas, topics
from common.errors import PoisonRecord
from common.settings import Settings
from common.view import View

log = logging.getLogger(__name__)

LAG_EVERY = 2.0  # seconds between two looks at the consumer groups' committed offsets
# The follower's fetches wait on the broker for this many bytes, or this long: a view a few tens of milliseconds
# behind, for a fetch (and its response parsed, on the consumer's I/O thread) every 50 ms instead of one for every
# few records. Each POST's own ride is in the view at once anyway (the handler adds it). Under load, 2,500 rides/s,
# this took the follower's two threads from about 50 to 20 us of CPU per ride, shared with the event loop's thread
# under one GIL (bench/api_bench.py).
FETCH_MIN_BYTES = 64 * 1024
FETCH_MAX_WAIT_MS = 50
# What each topic's records are, and what the view does with one.
READS: dict[str, tuple[type[Any], Callable[[View, Any], Any]]] = {
    topics.RIDE_DETAILS: (schemas.RideRequest, View.requested),
    topics.RIDE_CONFIRMED: (schemas.RideConfirmed, View.confirmed),
    topics.RIDE_REJECTED: (schemas.RideRejected, View.rejected),
}


class Follower:
    """Reads into `view` on a thread of its own until stop(); `groups`: the consumer groups whose lag it shows."""

    def __init__(self, settings: Settings, view: View, groups: list[str], history_s: float,
                 beat: Callable[[], None] = lambda: None) -> None:
        self.settings, self.view, self.groups, self.history_s, self.beat = settings, view, groups, history_s, beat
        self.names = {settings.topic(name): name for name in (*READS, topics.RIDE_STATS)}
        self.consumer = clients.reader(settings, "api-view")
        # common.clients' reader serves whole-partition reads elsewhere (no wait wanted there): these two settings
        # are the follower's own, set on the consumer's fetcher (private, kafka-python 3.0.12 as pinned), which
        # copied its settings when the consumer was made.
        self.consumer._fetcher.config.update(fetch_min_bytes=FETCH_MIN_BYTES, fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
        self.admin = clients.admin(settings)
        self.skipped = 0  # records the view could not read (the pipeline's consumers dead-letter them)
        # ride_stats' latest record per key while catching up: only the last snapshot of each group matters, and
        # parsing each one replayed (tens of kB, a millisecond or more) would delay the view's start for nothing.
        self._latest_stats: dict[bytes | None, bytes | None] = {}
        self.caught_up = threading.Event()  # set once the view holds what the topics held when it started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="follower", daemon=True)
        self._ends: dict[TopicPartition, int] = {}
        # Per partition: where reading began, and the offset of the last record read. A committed offset past
        # the last record means nothing is left but a transaction's commit marker, which takes an offset too.
        self.began: dict[tuple[str, int], int] = {}
        self.last: dict[tuple[str, int], int] = {}

    def start(self) -> None:
        """Assign every partition and seek to where the view begins (call with Kafka reachable), then follow."""
        partitions = []
        for topic in self.names:
            numbers = self.consumer.partitions_for_topic(topic)
            if not numbers:  # created a moment ago, and the broker that answered has not learned of it yet
                raise KafkaTimeoutError(f"{topic} is not known yet to the broker that answered")
            partitions += [TopicPartition(topic, p) for p in sorted(numbers)]
        self.consumer.assign(partitions)
        since_ms = int((time.time() - self.history_s) * 1000)
        rides = [tp for tp in partitions if self.names[tp.topic] != topics.RIDE_STATS]
        starts = self.consumer.offsets_for_times(dict.fromkeys(rides, since_ms))
        for tp in rides:
            found = starts.get(tp)
            if found is None:
                self.consumer.seek_to_end(tp)  # nothing in the window: only what comes from now on
            else:
                self.consumer.seek(tp, found.offset)
        self.consumer.seek_to_beginning(*[tp for tp in partitions if tp not in rides])
        self._ends = self.consumer.end_offsets(partitions)
        self.began = {(tp.topic, tp.partition): self.consumer.position(tp) for tp in partitions}
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.consumer.close(autocommit=False)
        self.admin.close()

    def _run(self) -> None:
        next_lag = 0.0
        last_error: type | None = None
        while not self._stop.is_set():
            try:
                records = consume.poll_batch(self.consumer, timeout_ms=200)
                for record in records:
                    self._fold(record)
                if not self.caught_up.is_set() and self._reached_ends():
                    for value in self._latest_stats.values():
                        self._stats(value)
                    self._latest_stats.clear()
                    self.caught_up.set()
                    log.info("the view holds the rides of the last %.0f min: %s", self.history_s / 60,
                             " ".join(f"{k}={v}" for k, v in self.view.counts.items()))
                if time.monotonic() >= next_lag:
                    next_lag = time.monotonic() + LAG_EVERY
                    self.view.lags(self._lags())
                self.beat()
            except KafkaError as e:  # an outage: kafka-python reconnects by itself; poll_batch says so once
                if type(e) is not last_error:  # anything else is said once, not once per retry
                    last_error = type(e)
                    log.warning("the view's reader failed (%s: %s); retrying", type(e).__name__, e)
                self._stop.wait(0.5)
            except Exception as e:  # a bug: the view goes stale, /healthz says so (no beat), the log says why
                log.error("the view stopped following the topics: %s: %s", type(e).__name__, e)
                return

    def _fold(self, record: ConsumerRecord) -> None:
        self.last[record.topic, record.partition] = record.offset
        name = self.names[record.topic]
        if name == topics.RIDE_STATS:
            if self.caught_up.is_set():
                self._stats(record.value)
            else:
                self._latest_stats[record.key] = record.value
            return
        try:
            if name == topics.RIDE_DETAILS and self.view.read_back(record.key, record.value):
                return  # a ride this instance accepted, already in the view: decoding it would change nothing
            model, fold = READS[name]
            fold(self.view, consume.decode(model, record))
        except Exception as e:  # noqa: BLE001  (a record's, whatever a producer wrote: never the follower's end)
            # Unreadable or invalid: the pipeline's own consumers set it aside with its reason; the view skips it.
            self.skipped += 1
            if not isinstance(e, PoisonRecord | ValueError):
                log.debug("skipped %s[%d]@%d: %s: %s", record.topic, record.partition, record.offset,
                          type(e).__name__, e)

    def _stats(self, value: bytes | None) -> None:
        try:
            snapshot = schemas.StatsSnapshot.model_validate_json(value or b"")
        except ValueError:  # pydantic's ValidationError is one
            self.skipped += 1
            return
        if not self.view.stats_saved(snapshot, datetime.now(timezone.utc)):
            self.skipped += 1

    def _reached_ends(self) -> bool:
        return all(self.consumer.position(tp) >= end for tp, end in self._ends.items())

    def _lags(self) -> dict[str, tuple[str | None, int | None]]:
        """Each group's records behind on the pipeline's topics it reads: the log's end (the last stable
        offset, as read_committed readers see it) less its committed offsets."""
        try:
            committed = self.admin.list_group_offsets(self.groups)
            mine = {g: {tp: om.offset for tp, om in offsets.items() if tp.topic in self.names and om.offset >= 0}
                    for g, offsets in committed.items()}
            ends = self.consumer.end_offsets(sorted({tp for offsets in mine.values() for tp in offsets}))
        except KafkaError as e:
            log.debug("lag: %s", e)
            return self.view.lag  # keep what was known
        lags: dict[str, tuple[str | None, int | None]] = {}
        for group in self.groups:
            offsets = mine.get(group) or {}
            topic = min((tp.topic for tp in offsets), default=None)
            behind = sum(self._behind(tp, at, ends.get(tp, at)) for tp, at in offsets.items()) if offsets else None
            lags[group] = (topic and topic.removeprefix(self.settings.topic_prefix), behind)
        return lags

    def _behind(self, tp: TopicPartition, committed: int, end: int) -> int:
        """Records a group has yet to read in one partition: up to the end, unless all this follower has read
        there (it reads to the end) is before the group's committed offset: then what is left is markers."""
        key = (tp.topic, tp.partition)
        if committed >= end:
            return 0
        read_to_end = self.consumer.position(tp) >= end
        if read_to_end and committed >= self.began.get(key, end) and committed > self.last.get(key, -1):
            return 0
        return end - committed

