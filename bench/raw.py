"""The raw kafka-python baselines of bench/pipeline.py: each does a script's I/O with none of its domain, with
the scripts' own client settings (common.clients), so that a script's figure over its baseline's is the cost
of what the project adds (validation, rendering, ledgers, dead letters), not of Kafka or of kafka-python.

Every loop is timed like the raw consumer: from its first non-empty poll to the N-th record done (read,
or produced and committed), the first batch's records left out of the numerator (report.rate_between).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

STALL_TIMEOUT = 60.0  # no progress for this long means something is wrong, not slow
Sample = tuple[float, int]  # (perf_counter, records done)


class RawError(Exception):
    """A raw loop that did not do its N records: one line."""


def _settings(bootstrap: str, group: str | None = None):
    from common.settings import ConsumerSettings, Settings

    return ConsumerSettings(bootstrap_servers=bootstrap, group_id=group) if group else \
        Settings(bootstrap_servers=bootstrap)


def consume_loop(consumer, n: int, what: str, handle: Callable[[dict], None]) -> tuple[Sample, Sample]:
    """Poll until N records were handled; handle(batch) gets each non-empty batch ({tp: [records]}).
    Returns the (time, count) samples after the first batch and after the last."""
    count, first = 0, None
    deadline = time.monotonic() + STALL_TIMEOUT * 2  # a group join before the first batch
    while count < n:
        batch = consumer.poll(timeout_ms=500)
        got = sum(len(rs) for rs in batch.values())
        if got:
            handle(batch)
            count += got
            if first is None:
                first = (time.perf_counter(), count)
            deadline = time.monotonic() + STALL_TIMEOUT
        elif time.monotonic() > deadline:
            raise RawError(f"{what}: {count} of {n} records done, then nothing for {STALL_TIMEOUT:.0f} s")
    if count != n:
        raise RawError(f"{what}: {count} records read, {n} were produced")
    assert first is not None  # n > 0 records were read
    return first, (time.perf_counter(), count)


def json_consumer(bootstrap: str, topic: str, n: int) -> tuple[Sample, Sample]:
    """poll + json.loads of every value: what any consumer of this pipeline does at the least. A group
    consumer with the scripts' settings (read_committed, 500 records a poll), that never commits."""
    from common import clients

    consumer = clients.consumer(_settings(bootstrap, f"{topic}.raw-json"), [topic], "bench-raw-json")
    try:
        def handle(batch: dict) -> None:
            for rs in batch.values():
                for r in rs:
                    json.loads(r.value)

        return consume_loop(consumer, n, "raw json consumer", handle)
    finally:
        consumer.close()


# The fields a confirmation adds to its request, with typical values: what transaction.py's domain computes.
CONFIRMATION_FIELDS = {"driver_id": "driver-001", "distance_km": 7.375, "pickup_eta_minutes": 10.5, "fare": "28.20",
                       "currency": "USD"}


def transformed(value: bytes) -> bytes:
    """The request's JSON with a confirmation's fields added, unvalidated and undecided: a record of a
    confirmation's size (about 520 B from a 370 B request), so that the loop moves as many bytes through
    Kafka as transaction.py does, and none of its domain."""
    ride = json.loads(value)
    ride.update(CONFIRMATION_FIELDS, confirmed_at=ride["requested_at"])
    return json.dumps(ride, separators=(",", ":")).encode()


def _offsets(batch: dict) -> dict:
    from kafka import OffsetAndMetadata

    return {tp: OffsetAndMetadata(rs[-1].offset + 1, "", -1) for tp, rs in batch.items()}


def transform_loop(bootstrap: str, source: str, target: str, n: int, transactional: bool) -> tuple[Sample, Sample]:
    """Consume `source`, produce transformed(value) to `target` per record, and per batch either flush then
    commit (at-least-once: transaction.py's work minus its domain), or do it all in one transaction with
    send_offsets_to_transaction (exactly-once)."""
    from common import clients

    what = "raw transactional loop" if transactional else "raw at-least-once loop"
    group = f"{source}.raw-{'eos' if transactional else 'alo'}"
    consumer = clients.consumer(_settings(bootstrap, group), [source], "bench-raw-transform")
    producer = clients.producer(_settings(bootstrap), "bench-raw-transform",
                                transactional_id=f"{group}-0" if transactional else None)
    try:
        if transactional:
            producer.init_transactions()

        def handle(batch: dict) -> None:
            if transactional:
                producer.begin_transaction()
            for rs in batch.values():
                for r in rs:
                    producer.send(target, key=r.key, value=transformed(r.value))
            if transactional:
                producer.send_offsets_to_transaction(_offsets(batch), consumer.group_metadata())
                producer.commit_transaction()
            else:
                producer.flush()
                consumer.commit(_offsets(batch))

        return consume_loop(consumer, n, what, handle)
    finally:
        consumer.close()
        producer.close()


def file_loop(bootstrap: str, source: str, n: int, directory: Path) -> tuple[Sample, Sample]:
    """Consume confirmed rides, json-decode each, write one small file per record atomically, commit per
    batch: email.py's I/O into its outbox, minus rendering and ledger."""
    from common import clients
    from common.mail import write_atomically  # email.py's own write (aside, then rename): the same I/O

    directory.mkdir(parents=True, exist_ok=True)
    consumer = clients.consumer(_settings(bootstrap, f"{source}.raw-files"), [source], "bench-raw-files")

    def handle(batch: dict) -> None:
        for rs in batch.values():
            for r in rs:
                ride = json.loads(r.value)
                body = f"To: {ride['customer_email']}\nSubject: ride {ride['ride_id']}\n\nfare {ride['fare']}\n"
                write_atomically(directory / f"{ride['ride_id']}.eml", body.encode())
        consumer.commit(_offsets(batch))

    try:
        return consume_loop(consumer, n, "raw file-writing loop", handle)
    finally:
        consumer.close()
