"""The pieces of the consume loop the three consumers share: poll a batch, and commit after the work.

Each script writes its own short loop with these, so that its guarantee is visible where it is made:

    while not shutdown.requested:
        records = poll_batch(consumer)
        ... process every record, then commit (or commit the transaction) ...
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CorruptRecordError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from common import reachability, schemas
from common.schemas import M, PoisonRecord

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500  # how quickly the loop notices a stop request when no records arrive


def poll_batch(consumer: KafkaConsumer, timeout_ms: int = POLL_TIMEOUT_MS) -> list[ConsumerRecord]:
    """One batch, in offset order within each partition; empty while Kafka is briefly unreachable.

    poll() reconnects by itself, but while it joins the group it may raise a retriable error (say, the
    broker restarting as the script starts): that is a pause, not a reason to stop. A broker lost or
    back is said once each (common.reachability).
    """
    reachability.check(consumer)
    try:
        batches = consumer.poll(timeout_ms=timeout_ms)
    except CorruptRecordError as e:
        return [stand_in_for_unreadable(consumer, e)]
    except KafkaError as e:
        if not e.retriable:
            raise
        log.warning("poll failed (%s: %s); Kafka may be restarting, retrying", type(e).__name__, e)
        time.sleep(timeout_ms / 1000)
        return []
    return [r for records in batches.values() for r in records]


# The header that marks a stand-in for a record kafka-python cannot read; its value is the reason.
UNREADABLE = "rides.unreadable"


def stand_in_for_unreadable(consumer: KafkaConsumer, error: CorruptRecordError) -> ConsumerRecord:
    """A stand-in for the record poll() cannot read (a header key that is not UTF-8, a failed CRC), which
    the consumer then sets aside like any poison record, and the position moved past it.

    poll() raises on such a record at every attempt, and any producer can write one, so without this one
    record would stop a consumer for good. kafka-python 3.0.12 (pinned) does not say which record failed;
    its fetcher holds the failing partition's records, positioned at the record it could not read (private,
    hence the check). The stand-in keeps the position; the record's own bytes cannot be had through
    kafka-python, so the dead letter carries an empty value and the reason.
    """
    part = getattr(getattr(consumer, "_fetcher", None), "_next_partition_records", None)
    tp, offset = getattr(part, "topic_partition", None), getattr(part, "next_fetch_offset", None)
    if tp is None or offset is None or tp not in consumer.assignment():
        raise error
    consumer.seek(tp, offset + 1)
    reason = f"kafka-python cannot read this record ({type(error).__name__}: {error})"
    return ConsumerRecord(tp.topic, tp.partition, -1, offset, -1, 0, None, b"", [(UNREADABLE, reason.encode())],
                          None, -1, 0, -1)


def decode(model: type[M], record: ConsumerRecord) -> M:
    """schemas.decode of a polled record; a stand-in for an unreadable one raises its own reason."""
    for key, value in record.headers or []:
        if key == UNREADABLE and record.value == b"" and record.key is None:
            # Any producer can write this header too, with no value at all: still this record's reason, one line.
            raise PoisonRecord(schemas.one_line(value.decode(errors="replace") if value else "unreadable record"))
    return schemas.decode(model, record.key, record.value)


def next_offsets(records: list[ConsumerRecord]) -> dict[TopicPartition, OffsetAndMetadata]:
    """The offsets to commit once every record of the batch is done: the next one to read, per partition."""
    last: dict[tuple[str, int], int] = {}  # each partition's last record: records are in offset order within one
    for r in records:
        last[r.topic, r.partition] = r.offset
    return {TopicPartition(*tp): OffsetAndMetadata(offset + 1, "", -1) for tp, offset in last.items()}


def rewind(consumer: KafkaConsumer) -> None:
    """Go back to the last committed offsets, so that a batch whose commit failed is processed again."""
    for tp in consumer.assignment():
        committed = consumer.committed(tp)
        if committed is None:
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, committed)


def commit(consumer: KafkaConsumer, records: list[ConsumerRecord]) -> bool:
    """Commit a batch whose work is done. A failed commit loses nothing: the work happened, and the next
    commit covers these offsets too; if the partition moved to another instance meanwhile, that instance
    processes the batch again, which is why every effect downstream must be idempotent."""
    try:
        consumer.commit(next_offsets(records))
        return True
    except KafkaError as e:
        log.warning("commit of %d records failed (%s: %s); a new owner of their partitions may process "
                    "them again", len(records), type(e).__name__, e)
        return False


class LogAssignment(ConsumerRebalanceListener):
    """One log line per rebalance: which partitions this instance now works on (tests wait for it)."""

    def on_partitions_revoked(self, revoked):
        if revoked:
            log.info("partitions revoked: %s", describe_partitions(revoked))

    def on_partitions_assigned(self, assigned):
        log.info("partitions assigned: %s", describe_partitions(assigned))


def describe_partitions(tps) -> str:
    """topic[0,1,2] other[3], or "none"."""
    by_topic: dict[str, list[int]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return " ".join(f"{t}{sorted(ps)}".replace(" ", "") for t, ps in sorted(by_topic.items())) or "none"


def lags(consumer: KafkaConsumer) -> dict[tuple[str, int], int]:
    """Records not processed yet per assigned partition ((topic, partition) -> count): the high watermark of
    the last fetch minus the position, where both are known. Read from kafka-python 3.0.12's subscription state
    (pinned; private): consumer.position() may call the broker, and this is read after every batch."""
    result = {}
    for tp, state in list(consumer._subscription.assignment.items()):
        if state.highwater is not None and state.position is not None:
            result[tp.topic, tp.partition] = max(0, state.highwater - state.position.offset)
    return result
