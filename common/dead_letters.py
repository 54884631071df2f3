"""Setting aside records that can never be processed, with headers that say why and where from.

A dead letter keeps the original key and value byte for byte (and the original headers), so it can be
replayed to its source topic once the cause is fixed (`python -m common.dlq`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.producer.future import FutureRecordMetadata

from common.cli import Fatal
from common.topics import dead_letter_topic

log = logging.getLogger(__name__)

REASON = "dlq.reason"                  # one line: what is wrong with the record
SOURCE_TOPIC = "dlq.source.topic"      # where it came from ...
SOURCE_PARTITION = "dlq.source.partition"
SOURCE_OFFSET = "dlq.source.offset"
SOURCE_TIMESTAMP = "dlq.source.timestamp"  # ms since the epoch, as produced
GROUP = "dlq.group"                    # ... and which consumer group set it aside
FAILED_AT = "dlq.failed.at"            # ms since the epoch
OUR_HEADERS = (REASON, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, SOURCE_TIMESTAMP, GROUP, FAILED_AT)


def where(record: ConsumerRecord) -> str:
    """topic[partition]@offset: how every log line names a record."""
    return f"{record.topic}[{record.partition}]@{record.offset}"


def headers_for(record: ConsumerRecord, reason: str, group_id: str) -> list[tuple[str, bytes]]:
    original = [(k, v) for k, v in (record.headers or []) if k not in OUR_HEADERS]
    return original + [
        (REASON, reason.encode()),
        (SOURCE_TOPIC, record.topic.encode()),
        (SOURCE_PARTITION, str(record.partition).encode()),
        (SOURCE_OFFSET, str(record.offset).encode()),
        (SOURCE_TIMESTAMP, str(record.timestamp).encode()),
        (GROUP, group_id.encode()),
        (FAILED_AT, str(int(time.time() * 1000)).encode()),
    ]


class DeadLetters:
    """Sends poison records to `<source topic>.dlq` through the given producer.

    With transaction.py's transactional producer, the dead letter is part of the same transaction as
    the batch's offsets: it is set aside exactly once, or not at all and retried.
    """

    def __init__(self, producer: KafkaProducer, group_id: str) -> None:
        self._producer = producer
        self._group_id = group_id
        self.count = 0

    def send(self, record: ConsumerRecord, reason: str) -> FutureRecordMetadata:
        """Send one dead letter; the returned future says whether the broker took it (callers that
        commit after a flush check it, so that a dead letter that failed is not committed past)."""
        topic = dead_letter_topic(record.topic)
        log.warning("%s: %s -> set aside in %s", where(record), reason, topic)
        future = self._producer.send(topic, key=record.key, value=record.value,
                                     headers=headers_for(record, reason, self._group_id))
        self.count += 1
        return future


def stop_if_undelivered(sends: list, script: str, what_is_kept: str = "committing") -> None:
    """After the producer's flush: stop the script (cli.Fatal) if a dead letter of this batch did not reach
    the broker, before the offsets move past its record. Clears `sends` for the next batch."""
    failed = [f.exception for f in sends if f.failed()]
    sends.clear()
    if failed:
        raise Fatal(f"{len(failed)} dead letters could not be stored ({failed[0]}); stopping without "
                    f"{what_is_kept}: their records are read again when {script} runs again")


@dataclass(frozen=True)
class DeadLetter:
    """A record read back from a dead-letter topic."""

    record: ConsumerRecord
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    group_id: str
    failed_at_ms: int

    @classmethod
    def parse(cls, record: ConsumerRecord) -> DeadLetter:
        h = {k: v.decode(errors="replace") for k, v in (record.headers or []) if k in OUR_HEADERS}
        return cls(
            record=record,
            reason=h.get(REASON, "(no reason recorded)"),
            source_topic=h.get(SOURCE_TOPIC, record.topic.removesuffix(".dlq")),
            source_partition=int(h.get(SOURCE_PARTITION, -1)),
            source_offset=int(h.get(SOURCE_OFFSET, -1)),
            group_id=h.get(GROUP, ""),
            failed_at_ms=int(h.get(FAILED_AT, 0)),
        )

    def original_headers(self) -> list[tuple[str, bytes]]:
        return [(k, v) for k, v in (self.record.headers or []) if k not in OUR_HEADERS]
