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
from common.cli import Fatal
from common.clients import ATTEMPT_TIMEOUT_MS, RECONNECT_BACKOFF_MAX_MS
from common.dead_letters import where
from common.decided import BadChangelogRecord, DecidedRides, decode_entries, encode_entries
from common.settings import Settings
from common.shutdown import Shutdown

log = logging.getLogger(__name__)

# A restore that makes no progress for this long (Kafka unreachable) fails like a batch: it is retried.
RESTORE_STALL_S = 30.0


class Stopped(Exception):
    """Asked to stop while restoring: nothing was processed yet."""


def reader(settings: Settings, client_id: str) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=client_id,
        bootstrap_timeout_ms=ATTEMPT_TIMEOUT_MS,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        # No group: it reads whole partitions when asked (assign + seek) and never commits.
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Only batches whose transaction committed: an aborted batch's rides were never decided.
        isolation_level="read_committed",
    )


class Changelog(consume.LogAssignment):
    """Keeps a DecidedRides store in step with the partitions this instance owns.

    As the consumer's rebalance listener it only takes notes (it runs inside poll()); the loop calls
    restore() before it processes a batch, so a partition's rides are never decided before its
    state is back.
    """

    def __init__(self, settings: Settings, topic: str, store: DecidedRides, shutdown: Shutdown,
                 client_id: str) -> None:
        self.topic, self.store, self.shutdown = topic, store, shutdown
        self._settings, self._client_id = settings, client_id
        self._reader: KafkaConsumer | None = None
        self.to_restore: set[int] = set()

    def on_partitions_revoked(self, revoked):
        super().on_partitions_revoked(revoked)
        self.store.forget({tp.partition for tp in revoked})
        self.to_restore -= {tp.partition for tp in revoked}

    def on_partitions_assigned(self, assigned):
        super().on_partitions_assigned(assigned)
        # Whatever was known of these partitions may be stale: another instance may have owned them.
        self.store.forget({tp.partition for tp in assigned})
        self.to_restore |= {tp.partition for tp in assigned}

    def send(self, producer: KafkaProducer) -> list[FutureRecordMetadata]:
        """The current batch's new decisions, one record per partition, through the batch's producer."""
        return [producer.send(self.topic, partition=p, value=encode_entries(entries))
                for p, entries in sorted(self.store.staged().items())]

    def restore(self) -> None:
        """Read the changelog partitions assigned since the last call, up to their end, into the store.
        Raises a KafkaError if Kafka does not answer (the caller retries as for a failed batch)."""
        if not self.to_restore:
            return
        partitions = sorted(self.to_restore)
        started = time.monotonic()
        if self._reader is None:
            self._reader = reader(self._settings, f"{self._client_id}-restore")
        tps = [TopicPartition(self.topic, p) for p in partitions]
        self._reader.assign(tps)
        self._reader.seek_to_beginning(*tps)
        # With read_committed, the end is the last stable offset: an open transaction's entries are not
        # read, and they are not decided yet (its offsets are not committed either).
        end = self._reader.end_offsets(tps, timeout_ms=ATTEMPT_TIMEOUT_MS)
        restored, progress_at = 0, time.monotonic()
        while any(self._behind(tp, end[tp]) for tp in tps):
            if self.shutdown.requested:
                raise Stopped()
            batches = self._reader.poll(timeout_ms=500)
            for tp, records in batches.items():
                for r in records:
                    try:
                        entries = decode_entries(r.value)
                    except BadChangelogRecord as e:
                        raise Fatal(f"{where(r)}: {e}; the decided rides cannot be restored (delete the topic "
                                    f"to forget them, at the risk of deciding a repeated request again)") from None
                    self.store.apply(tp.partition, entries, r.timestamp)
                    restored += len(entries)
            if batches:
                progress_at = time.monotonic()
            elif time.monotonic() - progress_at > RESTORE_STALL_S:
                raise KafkaTimeoutError(f"restoring {self.topic}: no progress for {RESTORE_STALL_S:.0f} s")
        self.store.prune(int(time.time() * 1000))
        self.to_restore.clear()
        log.info("restored %d decided rides of %s%s in %.1f s", restored, self.topic,
                 str(partitions).replace(" ", ""), time.monotonic() - started)

    def _behind(self, tp: TopicPartition, end: int) -> bool:
        assert self._reader is not None
        position = self._reader.position(tp, timeout_ms=ATTEMPT_TIMEOUT_MS)  # None: not known yet
        return position is None or position < end

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
