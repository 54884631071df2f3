"""The raw figures of bench/pipeline.py and the input they share with the scripts' runs: the ride requests
exactly as rides.py sends them and the confirmed rides transaction.py would make of them (both serialized
before any timing), the raw producer and consumer, the raw loops of bench/raw.py, and the broker's own limit
(bench/broker_limit.py).
"""

from __future__ import annotations

import random
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from report import BROKER_LIMIT, RAW_ALO, RAW_EOS, RAW_FILES, RAW_JSON, Figure, megabytes_per_s, rate_between
from runs import BenchError, progress


def ride_records(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """N (key, value) pairs exactly as rides.py sends them for this seed, serialized before any timing."""
    import rides
    from common import schemas

    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    out = []
    for _ in range(n):
        ride = rides.build_ride(rng, now)
        out.append((schemas.ride_key(ride.ride_id), schemas.encode(ride)))
    return out


def confirmed_records(records: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The RideConfirmed records transaction.py would publish for these requests (the rejected left out),
    made directly with its own decide(): email.py's and analysis.py's input, serialized before any timing."""
    import transaction
    from common import schemas

    now = datetime.now(timezone.utc)
    decided = (transaction.decide(schemas.RideRequest.model_validate_json(v), now) for _, v in records)
    return [(schemas.ride_key(d.ride_id), schemas.encode(d)) for d in decided
            if isinstance(d, schemas.RideConfirmed)]


def raw_produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """Seconds from the first send to the end of one flush, every record acknowledged."""
    from common import clients
    from common.settings import Settings

    producer = clients.producer(Settings(bootstrap_servers=bootstrap), "bench-raw-producer")
    try:
        started = time.perf_counter()
        futures = [producer.send(topic, key=k, value=v) for k, v in records]
        producer.flush(timeout=120)
        seconds = time.perf_counter() - started
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            raise BenchError(f"raw producer: {len(failed)} of {len(records)} records not acknowledged "
                             f"(first: {failed[0].exception!r})")
        return seconds
    finally:
        producer.close()


def raw_consume(bootstrap: str, topic: str, n: int) -> float:
    """Rate of a plain consumer reading N records from the beginning: from the first non-empty poll."""
    import raw
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             client_id="bench-raw-consumer")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        try:  # the same loop as the raw loops', doing nothing with each batch
            first, last = raw.consume_loop(consumer, n, "raw consumer", lambda batch: None)
        except raw.RawError as e:
            raise BenchError(str(e)) from None
        return rate_between(first, last)
    finally:
        consumer.close()


def raw_loops(bootstrap: str, run_id: str, requests: str, confirmed: str, n: int, m: int,
              work_dir: Path) -> list[Figure]:
    """The raw kafka-python loops (bench/raw.py): requests is a topic of the N ride requests, confirmed of
    the M confirmed rides."""
    import raw

    try:
        return _raw_loops(raw, bootstrap, run_id, requests, confirmed, n, m, work_dir)
    except raw.RawError as e:
        raise BenchError(str(e)) from None


def _raw_loops(raw, bootstrap: str, run_id: str, requests: str, confirmed: str, n: int, m: int,
               work_dir: Path) -> list[Figure]:
    progress(f"raw json consumer: {m:,} confirmed rides")
    json_rate = rate_between(*raw.json_consumer(bootstrap, confirmed, m))
    progress(f"raw at-least-once loop: {n:,} records")
    alo_rate = rate_between(*raw.transform_loop(bootstrap, requests, f"{run_id}-raw.alo-out", n, False))
    progress(f"raw transactional loop: {n:,} records")
    eos_rate = rate_between(*raw.transform_loop(bootstrap, requests, f"{run_id}-raw.eos-out", n, True))
    progress(f"raw file-writing loop: {m:,} confirmed rides")
    files_rate = rate_between(*raw.file_loop(bootstrap, confirmed, m, work_dir / f"{run_id}-raw-files"))
    scripts_consumer = "common.clients.consumer (group, read_committed, 500 a poll)"
    return [
        Figure(RAW_JSON, json_rate, None, f"{scripts_consumer}: poll + json.loads, over the confirmed rides"),
        Figure(RAW_ALO, alo_rate, None, f"{scripts_consumer} + producer: json in, a confirmation's size of json "
                                        "out; per batch flush, then commit"),
        Figure(RAW_EOS, eos_rate, None, "the same in one transaction per batch (send_offsets_to_transaction)"),
        Figure(RAW_FILES, files_rate, None, f"{scripts_consumer}: json-decode, one small file per record "
                                            "(email.py's write: aside, then rename), commit per batch"),
    ]


def broker_limit(bootstrap: str, topic: str, records: int, record_bytes: float, checks: list[str]) -> Figure:
    """Java's ProducerPerformance on records of the rides' size (bench/broker_limit.py); "-" with a check
    line when it cannot run (no Maven, offline)."""
    import broker_limit as java

    progress(f"broker limit: Java's ProducerPerformance, {records:,} records of {record_bytes:.0f} B")
    note = (f"Java's ProducerPerformance (kafka-tools {java.KAFKA_VERSION}), acks=all, idempotent, linger 10 ms, "
            f"{records:,} records of the rides' mean size, its own timing")
    try:
        limit = java.producer_performance(bootstrap, topic, records, round(record_bytes))
    except (java.LimitError, subprocess.TimeoutExpired, OSError) as e:
        checks.append(f"{BROKER_LIMIT}: not measured ({e})")
        return Figure(BROKER_LIMIT, None, None, note)
    return Figure(BROKER_LIMIT, limit, megabytes_per_s(limit, record_bytes), note)
