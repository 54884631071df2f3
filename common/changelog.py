"""transaction.py's decided rides on Kafka: written with each batch's outputs, restored on assignment.

The state itself (common.decided) is pure; this module moves it to and from the changelog topic
(common.topics.decided_topic). Partition p of the changelog holds the decisions of the rides read from
partition p of ride_details, and only the instance that owns p writes to it, inside its transactions.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import TopicPartition

from common import consume
from common.clients import ATTEMPT_TIMEOUT_MS, reader
from common.dead_letters import where
from common.decided import BadChangelogRecord, DecidedRides, decode_entries, encode_entries, home_partition
from common.errors import Stopped
from common.settings import Settings
from common.shutdown import Shutdown

log = logging.getLogger(__name__)

# A restore that makes no progress for this long (Kafka unreachable) fails like a batch: it is retried.
RESTORE_STALL_S = 30.0
# How long a restore waits for a transaction left open on the changelog: longer than the transaction
# timeout (common.clients: 15 s), after which the broker aborts it.
SETTLE_S = 30.0


class Changelog(consume.LogAssignment):
    """Keeps a DecidedRides store in step with the partitions this instance owns.

    As the consumer's rebalance listener it only takes notes (it runs inside poll()); the loop calls
    restore() before it processes a batch, so a partition's rides are never decided before its
    state is back.
    """

    def __init__(self, settings: Settings, source: str, topic: str, store: DecidedRides, shutdown: Shutdown,
                 client_id: str) -> None:
        self.source, self.topic, self.store, self.shutdown = source, topic, store, shutdown
        self._settings, self._client_id = settings, client_id
        self._reader: KafkaConsumer | None = None
        self._end_reader: KafkaConsumer | None = None
        self.to_restore: set[int] = set()
        self.skipped = 0  # changelog records or entries that could not be used

    def on_partitions_revoked(self, revoked):
        super().on_partitions_revoked(revoked)
        self.store.forget({tp.partition for tp in revoked})
        self.to_restore -= {tp.partition for tp in revoked}

    def on_partitions_assigned(self, assigned):
        super().on_partitions_assigned(assigned)
        # Whatever was known of these partitions may be stale: another instance may have owned them.
        self.store.forget({tp.partition for tp in assigned})
        self.to_restore |= {tp.partition for tp in assigned}

    def reload(self, partitions: set[int]) -> None:
        """Forget these partitions and read them again from the changelog before the next batch: after a
        failed batch, whether its commit went through is not known here, the changelog knows."""
        self.store.forget(partitions)
        self.to_restore |= partitions

    def send(self, producer: KafkaProducer) -> list[FutureRecordMetadata]:
        """The current batch's new decisions, one record per partition, through the batch's producer."""
        return [producer.send(self.topic, partition=p, value=encode_entries(entries))
                for p, entries in sorted(self.store.staged().items())]

    def restore(self, consumer: KafkaConsumer) -> None:
        """Read the changelog partitions assigned since the last call, up to their end, into the store.
        Raises a KafkaError if Kafka does not answer in time (the caller retries as for a failed batch)."""
        assigned = {tp.partition for tp in consumer.assignment() if tp.topic == self.source}
        self.to_restore &= assigned
        if not self.to_restore:
            return
        partitions = sorted(self.to_restore)
        started = time.monotonic()
        # First where this instance resumes reading: with read_committed, the committed offsets are
        # fetched as stable, so this waits while the previous owner's last transaction is being
        # committed; the rides it decided are then in the changelog, or will be read again.
        for p in partitions:
            if consumer.position(TopicPartition(self.source, p), timeout_ms=ATTEMPT_TIMEOUT_MS) is None:
                raise KafkaTimeoutError(f"no committed offset of {self.source}[{p}] yet")
        if self._reader is None or self._end_reader is None:
            self._reader = reader(self._settings, f"{self._client_id}-restore")
            self._end_reader = reader(self._settings, f"{self._client_id}-restore-end", "read_uncommitted")
        tps = [TopicPartition(self.topic, p) for p in partitions]
        end = self._settled_end(tps)
        self._reader.assign(tps)
        self._reader.seek_to_beginning(*tps)
        count = len(self._reader.partitions_for_topic(self.topic) or ())
        if not count:  # created a moment ago, and the broker that answered has not learned of it yet: retried
            raise KafkaTimeoutError(f"{self.topic} is not known yet to the broker that answered")
        restored, progress_at = 0, time.monotonic()
        while any(self._behind(tp, end[tp]) for tp in tps):
            if self.shutdown.requested:
                raise Stopped()
            batches = self._reader.poll(timeout_ms=500)
            for records in batches.values():
                for r in records:
                    restored += self._apply(r, count)
            if batches:
                progress_at = time.monotonic()
            elif time.monotonic() - progress_at > RESTORE_STALL_S:
                raise KafkaTimeoutError(f"restoring {self.topic}: no progress for {RESTORE_STALL_S:.0f} s")
        self.store.prune(int(time.time() * 1000))
        self.to_restore.clear()
        log.info("restored %d decided rides of %s%s in %.1f s", restored, self.topic,
                 str(partitions).replace(" ", ""), time.monotonic() - started)

    def _settled_end(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Where the changelog partitions end, once no transaction is open on them. Only their owner
        writes to them; an open transaction is the previous owner's, being committed (its markers are
        written partition by partition) or left by a crash (aborted by the broker within the transaction
        timeout). Reading before it settles would miss rides that are decided."""
        assert self._reader is not None and self._end_reader is not None
        deadline = time.monotonic() + SETTLE_S
        while True:
            stable = self._reader.end_offsets(tps, timeout_ms=ATTEMPT_TIMEOUT_MS)  # the last stable offsets
            if stable == self._end_reader.end_offsets(tps, timeout_ms=ATTEMPT_TIMEOUT_MS):
                return stable
            if time.monotonic() > deadline:
                raise KafkaTimeoutError(f"a transaction is still open on {self.topic} after {SETTLE_S:.0f} s")
            if self.shutdown.sleep(0.1):
                raise Stopped()

    def _apply(self, record, partitions: int) -> int:
        """One changelog record into the store; how many rides it added. Nothing but transaction.py
        should write to the changelog (protect it with an ACL where that matters): a record it cannot
        use is skipped with a warning rather than stopping every restart."""
        try:
            entries = decode_entries(record.value)
        except BadChangelogRecord as e:
            log.warning("%s: %s; skipped", where(record), e)
            self.skipped += 1
            return 0
        mine = {k: v for k, v in entries.items() if home_partition(str(k).encode(), partitions) == record.partition}
        if len(mine) < len(entries):
            log.warning("%s: %d rides of other partitions; skipped", where(record), len(entries) - len(mine))
            self.skipped += len(entries) - len(mine)
        self.store.apply(record.partition, mine, record.timestamp)
        return len(mine)

    def _behind(self, tp: TopicPartition, end: int) -> bool:
        assert self._reader is not None
        position = self._reader.position(tp, timeout_ms=ATTEMPT_TIMEOUT_MS)  # None: not known yet
        return position is None or position < end

    def close(self) -> None:
        for r in (self._reader, self._end_reader):
            if r is not None:
                r.close()
