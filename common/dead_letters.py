"""Setting aside records that can never be processed, with headers that say why and where from.

A dead letter keeps the original key and value byte for byte (and the original headers), so it can be
replayed to its source topic once the cause is fixed (`python -m tools.dlq` reads letters back and replays
them). Only a record too large to carry our headers too (near Kafka's 1 MB limit) is set aside truncated,
marked `dlq.truncated`, and is never replayed: a letter that cannot be stored would stop the consumer at
that record for good.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.producer.future import FutureRecordMetadata
from kafka.record.default_records import DefaultRecordBatchBuilder

from common.errors import Fatal
from common.topics import dead_letter_topic

log = logging.getLogger(__name__)

REASON = "dlq.reason"                  # one line: what is wrong with the record
SOURCE_TOPIC = "dlq.source.topic"      # where it came from ...
SOURCE_PARTITION = "dlq.source.partition"
SOURCE_OFFSET = "dlq.source.offset"
SOURCE_TIMESTAMP = "dlq.source.timestamp"  # ms since the epoch, as produced
GROUP = "dlq.group"                    # ... and which consumer group set it aside
FAILED_AT = "dlq.failed.at"            # ms since the epoch
TRUNCATED = "dlq.truncated"            # only on a letter cut to fit: the original value's size in bytes
OUR_HEADERS = (REASON, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, SOURCE_TIMESTAMP, GROUP, FAILED_AT, TRUNCATED)

# Room kept under the producer's max_request_size for what the size estimate leaves out (the length
# fields of a key and value grow with them: a few bytes).
SIZE_MARGIN = 1024


def where(record: ConsumerRecord) -> str:
    """topic[partition]@offset: how every log line names a record."""
    return f"{record.topic}[{record.partition}]@{record.offset}"


def headers_for(record: ConsumerRecord, reason: str, group_id: str) -> list[tuple[str, bytes]]:
    # A header may have no value at all (the protocol and the Java client allow it); kafka-python cannot send one,
    # so it is kept with an empty value rather than making the dead letter, and the consumer, fail.
    original = [(k, b"" if v is None else v) for k, v in (record.headers or []) if k not in OUR_HEADERS]
    return original + [
        (REASON, reason.encode()),
        (SOURCE_TOPIC, record.topic.encode()),
        (SOURCE_PARTITION, str(record.partition).encode()),
        (SOURCE_OFFSET, str(record.offset).encode()),
        (SOURCE_TIMESTAMP, str(record.timestamp).encode()),
        (GROUP, group_id.encode()),
        (FAILED_AT, str(int(time.time() * 1000)).encode()),
    ]


def letter_for(record: ConsumerRecord, reason: str, group_id: str,
               max_bytes: int) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The dead letter's key, value and headers: the record's own plus ours, or, when that would not fit in
    max_bytes (any producer can write a record that leaves no room for our headers), a truncated copy that
    says so: the original headers dropped, the key and value cut to fit, TRUNCATED and the reason added."""
    headers = headers_for(record, reason, group_id)
    if _size(record.key, record.value, headers) <= max_bytes:
        return record.key, record.value, headers
    size = len(record.value or b"")
    why = f"{reason}; set aside truncated: the record ({size} bytes of value) is too large to keep whole here"
    ours = headers_for(record._replace(headers=[]), why, group_id) + [(TRUNCATED, str(size).encode())]
    room = max(0, max_bytes - _size(b"", b"", ours))  # for the key and value together
    key = None if record.key is None else record.key[:room]
    value = None if record.value is None else record.value[: room - len(key or b"")]
    return key, value, ours


def _size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """kafka-python's upper bound of a record's size, as its producer checks it against max_request_size."""
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)


class DeadLetters:
    """Sends poison records to `<source topic>.dlq` through the given producer.

    With transaction.py's transactional producer, the dead letter is part of the same transaction as
    the batch's offsets: it is set aside exactly once, or not at all and retried.
    """

    def __init__(self, producer: KafkaProducer, group_id: str) -> None:
        self._producer = producer
        self._group_id = group_id
        # A letter must fit what this producer accepts (kafka-python's default when it does not say).
        config = getattr(producer, "config", KafkaProducer.DEFAULT_CONFIG)
        self._max_bytes = config["max_request_size"] - SIZE_MARGIN
        self.count = 0
        self.sent: list[tuple[str, str]] = []  # (topic, reason) of each letter sent: counted once committed

    def send(self, record: ConsumerRecord, reason: str) -> FutureRecordMetadata:
        """Send one dead letter; the returned future says whether the broker took it (callers that
        commit after a flush check it, so that a dead letter that failed is not committed past)."""
        topic = dead_letter_topic(record.topic)
        key, value, headers = letter_for(record, reason, self._group_id, self._max_bytes)
        truncated = " (truncated: too large to keep whole)" if TRUNCATED in dict(headers) else ""
        log.warning("%s: %s -> set aside in %s%s", where(record), reason, topic, truncated)
        future = self._producer.send(topic, key=key, value=value, headers=headers)
        self.count += 1
        self.sent.append((topic, reason))
        return future

    def committed(self) -> list[tuple[str, str]]:
        """The (topic, reason) of the letters sent since the last call: the loop calls it once their batch is
        committed (before, a failed batch's letters are sent again)."""
        sent, self.sent = self.sent, []
        return sent


def stop_if_undelivered(sends: list, script: str, what_is_kept: str = "committing") -> None:
    """After the producer's flush: stop the script (cli.Fatal) if a dead letter of this batch did not reach
    the broker, before the offsets move past its record. Clears `sends` for the next batch."""
    failed = [f.exception for f in sends if f.failed()]
    sends.clear()
    if failed:
        raise Fatal(f"{len(failed)} dead letters could not be stored ({failed[0]}); stopping without "
                    f"{what_is_kept}: their records are read again when {script} runs again")
