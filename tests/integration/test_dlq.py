"""`python -m common.dlq` against the real broker: list shows why and where from; replay sends back
exactly the chosen dead letters, byte for byte, with their original headers."""

from __future__ import annotations

import json

import pytest
from kafka import KafkaProducer

from common import topics
from common.clients import admin
from common.dead_letters import DeadLetters
from common.settings import Settings
from tests.integration.pipeline import Script, read_all, unique_prefix

# (key, value, original headers, reason): what a consumer would have set aside, hostile bytes included.
SOURCES = [
    (f"ride-{i}".encode() if i != 6 else None,
     [b'{"ride_id": 1}', b"\xff\xfe not utf-8", b"", b'{"nested": ' * 50, b"\x1b[2J" + b"x" * 200_000][i % 5],
     [("trace-id", f"t{i}".encode())] if i % 2 == 0 else [],
     f"RideRequest invalid: reason number {i}")
    for i in range(10)
]


@pytest.fixture
def dead_lettered(kafka_bootstrap):
    """SOURCES produced to <prefix>ride_details, read back, then set aside with DeadLetters into
    <prefix>ride_details.dlq (offsets 0-9, in order), and SOURCES[1] once more by another group (offset
    10), as two groups reading one topic would. Returns the prefix and the source records."""
    prefix = unique_prefix("dlq")
    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    a = admin(settings)
    try:
        topics.ensure_topics(a, settings, [topics.RIDE_DETAILS, topics.dead_letter_topic(topics.RIDE_DETAILS)])
    finally:
        a.close()
    source_topic = settings.topic(topics.RIDE_DETAILS)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, client_id="tests-dlq", max_request_size=2_000_000)
    try:
        # One partition for all, so that the order read back is the order sent.
        for key, value, headers, _ in SOURCES:
            producer.send(source_topic, key=key, value=value, headers=headers, partition=2)
        producer.flush()
        records = [r for r in read_all(kafka_bootstrap, source_topic, quiet=1.0) if r.partition == 2]
        assert len(records) == len(SOURCES)
        letters = DeadLetters(producer, group_id="tests-dlq-group")
        for record, (*_, reason) in zip(records, SOURCES, strict=True):
            letters.send(record, reason)
        producer.flush()
        DeadLetters(producer, group_id="tests-other-group").send(records[1], "other group's reason")
        producer.flush()
    finally:
        producer.close()
    return prefix, records


def run_dlq(kafka_bootstrap: str, prefix: str, *args: str, expect: int = 0) -> Script:
    with Script("common.dlq", *args, bootstrap=kafka_bootstrap, prefix=prefix) as script:
        script.wait(timeout=90, expect=expect)
    return script


def test_list_names_reason_and_origin_of_every_dead_letter(kafka_bootstrap, dead_lettered):
    prefix, records = dead_lettered
    lines = run_dlq(kafka_bootstrap, prefix, "list", "ride_details.dlq").stdout().splitlines()
    assert len(lines) == len(SOURCES) + 1
    assert lines[10].startswith(f"10  {prefix}ride_details[2]@{records[1].offset}  ")
    assert "  tests-other-group  other group's reason  " in lines[10]
    for offset, (line, record, source) in enumerate(zip(lines[:10], records, SOURCES, strict=True)):
        assert line.startswith(f"{offset}  {prefix}ride_details[2]@{record.offset}  ")
        assert f"  tests-dlq-group  {source[3]}  " in line
        assert line.isprintable() and len(line) < 500  # hostile bytes escaped, 200 KB values cut short
    assert "\\x1b[2J" in lines[4] and "\\xff\\xfe not utf-8" in lines[1] and "value[0 B]=(empty)" in lines[2]

    # The source topic's name works too; --limit and --offsets narrow it down; --json for scripts.
    other = run_dlq(kafka_bootstrap, prefix, "list", "ride_details.dlq", "--group", "tests-other-group")
    assert [line.split()[0] for line in other.stdout().splitlines()] == ["10"]
    out = run_dlq(kafka_bootstrap, prefix, "list", "ride_details", "--offsets", "2-8", "--limit", "3", "--json")
    objs = [json.loads(line) for line in out.stdout().splitlines()]
    assert [o["offset"] for o in objs] == [2, 3, 4]
    assert [o["reason"] for o in objs] == [s[3] for s in SOURCES[2:5]]
    assert objs[0]["headers"] == ["trace-id"] and objs[1]["headers"] == []


def test_replay_sends_exactly_the_chosen_records_back(kafka_bootstrap, dead_lettered):
    prefix, records = dead_lettered
    chosen = [1, 3, 4, 5, 6]
    # Offset 10 is record 1 again, set aside by a second group: it is replayed once, not twice.
    replay = run_dlq(kafka_bootstrap, prefix, "replay", "ride_details.dlq", "--offsets", "1,3-6,10")
    assert "is the same record as" in replay.log()
    replayed_lines = replay.stdout().splitlines()
    assert [int(line.split()[1]) for line in replayed_lines] == chosen
    assert all(f" -> {prefix}ride_details[" in line for line in replayed_lines)

    after = read_all(kafka_bootstrap, f"{prefix}ride_details", quiet=2.0)
    originals = {(r.partition, r.offset) for r in records}
    new = [r for r in after if (r.partition, r.offset) not in originals]
    got = sorted((r.key or b"", r.value, r.headers) for r in new)
    want = sorted((records[i].key or b"", records[i].value, records[i].headers) for i in chosen)
    assert got == want  # same key, value and original headers; none of the dlq.* headers; nothing else

    # The dead-letter topic is only read, never changed: every dead letter is still listed.
    lines = run_dlq(kafka_bootstrap, prefix, "list", "ride_details.dlq").stdout().splitlines()
    assert len(lines) == len(SOURCES) + 1


def test_errors_are_one_line_and_non_zero(kafka_bootstrap, dead_lettered):
    prefix, _ = dead_lettered
    missing = run_dlq(kafka_bootstrap, prefix, "list", "no_such_topic", expect=1)
    assert f"topic {prefix}no_such_topic.dlq does not exist" in missing.log()
    assert len(missing.log().strip().splitlines()) == 1 and missing.stdout() == ""

    nothing = run_dlq(kafka_bootstrap, prefix, "replay", "ride_details.dlq", "--offsets", "100-200", expect=1)
    assert "no dead letters at offsets 100-200" in nothing.log() and "nothing replayed" in nothing.log()

    usage = run_dlq(kafka_bootstrap, prefix, "replay", "ride_details.dlq", "--offsets", "x", expect=2)
    assert "'x' is not an offset" in usage.log()
