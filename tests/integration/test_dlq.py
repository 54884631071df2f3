"""`python -m tools.dlq` against the real broker: list shows why and where from; replay sends back
exactly the chosen dead letters, byte for byte, with their original headers."""

from __future__ import annotations

import json

import pytest
from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord

from common import clients, topics
from common.clients import admin
from common.dead_letters import DeadLetters, headers_for
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
        clients.create_topics(a, settings, [topics.RIDE_DETAILS, topics.dead_letter_topic(topics.RIDE_DETAILS)])
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
    with Script("tools.dlq", *args, bootstrap=kafka_bootstrap, prefix=prefix) as script:
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


# ------------------------------------------------------------------------------ letters nobody can trust


def make_topics(bootstrap: str, prefix: str) -> Settings:
    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    a = admin(settings)
    try:
        clients.create_topics(a, settings)  # all of the pipeline's topics, with its partition counts
    finally:
        a.close()
    return settings


def test_malformed_letters_are_listed_with_what_is_wrong_and_never_replayed(kafka_bootstrap):
    prefix, other = unique_prefix("dlq"), unique_prefix("other")
    settings = make_topics(kafka_bootstrap, prefix)
    make_topics(kafka_bootstrap, other)
    source, dlq = settings.topic(topics.RIDE_DETAILS), settings.topic(topics.dead_letter_topic(topics.RIDE_DETAILS))

    def letter(i: int, **changes: bytes | None) -> list[tuple[str, bytes]]:
        record = ConsumerRecord(source, 1, -1, 100 + i, 1_700_000_000_000, 0, b"k", b"v", [], None, 0, 0, 0)
        headers: dict[str, bytes | None] = dict(headers_for(record, f"reason {i}", "tests-group"))
        for name, value in changes.items():
            name = "dlq." + name.replace("_", ".")
            headers[name] = value
        return [(k, v) for k, v in headers.items() if v is not None]

    letters = [
        ("good", letter(0)),
        ("partition=abc", letter(1, source_partition=b"abc")),
        ("failed.at too big", letter(2, failed_at=b"99999999999999999999")),
        ("no headers", []),
        ("not UTF-8", letter(4, reason=b"\xff\xfe", group=b"\xc3")),
        ("escape sequences", letter(5, group=b"\x1b]0;pwned\x07", reason=b"\x1b[2J\x1b[31mred")),
        ("another pipeline", letter(6, source_topic=f"{other}ride_details".encode())),
        ("another topic", letter(7, source_topic=f"{prefix}ride_confirmed".encode())),
        ("good too", letter(8)),
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, client_id="tests-dlq")
    try:
        for i, (_, headers) in enumerate(letters):
            producer.send(dlq, key=f"key-{i}".encode(), value=f"value-{i}".encode(), headers=headers)
        producer.flush()
    finally:
        producer.close()

    listing = run_dlq(kafka_bootstrap, prefix, "list", "ride_details.dlq")
    lines = listing.stdout().splitlines()
    assert len(lines) == len(letters)
    usable = ("good", "escape sequences", "good too")  # hostile text, shown escaped, but from the right place
    assert [("unusable" in line) for line in lines] == [name not in usable for name, _ in letters]
    assert "dlq.source.partition is not a number" in lines[1] and "dlq.failed.at is not a time" in lines[2]
    assert "no dlq.* headers" in lines[3] and "dlq.reason is not UTF-8" in lines[4] and "\\xff\\xfe" in lines[4]
    assert "\\x1b]0;pwned\\x07" in lines[5] and f"is {other}ride_details, not {prefix}ride_details" in lines[6]
    as_json = run_dlq(kafka_bootstrap, prefix, "list", "ride_details.dlq", "--json").stdout().splitlines()
    assert [json.loads(line)["problems"] == [] for line in as_json] == [name in usable for name, _ in letters]

    replay = run_dlq(kafka_bootstrap, prefix, "replay", "ride_details.dlq", "--all")
    assert [line.split()[1] for line in replay.stdout().splitlines()] == ["0", "5", "8"]
    assert "6 unusable not replayed" in replay.log()
    for script in (listing, replay):
        assert "\x1b" not in script.stdout() + script.log() and "\x07" not in script.stdout() + script.log()
    assert sorted(r.value for r in read_all(kafka_bootstrap, source, quiet=1.0)) == [b"value-0", b"value-5", b"value-8"]
    for untouched in (f"{other}ride_details", f"{prefix}ride_confirmed"):
        assert read_all(kafka_bootstrap, untouched, quiet=0.5) == []


def test_replay_writes_only_into_the_pipelines_source_topics(kafka_bootstrap):
    prefix = unique_prefix("dlq")
    make_topics(kafka_bootstrap, prefix)
    refused = run_dlq(kafka_bootstrap, prefix, "replay", "ride_rejected", "--all", expect=1)
    assert "replay reads only the pipeline's dead-letter topics" in refused.log()
    assert len(refused.log().strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ any topic


def test_show_prints_every_record_of_any_topic_escaped(kafka_bootstrap):
    prefix = unique_prefix("show")
    settings = make_topics(kafka_bootstrap, prefix)
    rejected = settings.topic(topics.RIDE_REJECTED)
    sent = [(p, f"ride-{p}-{i}".encode(), b'{"reason": "outside"}' if i else b"\x1b[2J\xff")
            for p in range(3) for i in range(3)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, client_id="tests-show")
    try:
        for p, key, value in sent:
            producer.send(rejected, key=key, value=value, partition=p, headers=[("trace", b"t\x1b")])
        producer.flush()
    finally:
        producer.close()

    lines = run_dlq(kafka_bootstrap, prefix, "show", "ride_rejected").stdout().splitlines()
    assert [line.split()[0] for line in lines] == [f"{rejected}[{p}]@{i}" for p in range(3) for i in range(3)]
    assert all(line.isprintable() for line in lines)
    assert "key=ride-0-0" in lines[0] and "value[5 B]=\\x1b[2J\\xff" in lines[0] and "headers=trace" in lines[0]

    one = run_dlq(kafka_bootstrap, prefix, "show", "ride_rejected", "--partition", "1", "--offsets", "1-", "--json")
    objs = [json.loads(line) for line in one.stdout().splitlines()]
    assert [(o["partition"], o["offset"], o["key"], o["value"]) for o in objs] == [
        (1, 1, "ride-1-1", '{"reason": "outside"}'), (1, 2, "ride-1-2", '{"reason": "outside"}')]
    assert objs[0]["headers"] == [["trace", "t\x1b"]]

    missing = run_dlq(kafka_bootstrap, prefix, "show", "no_such_topic", expect=1)
    assert f"topic {prefix}no_such_topic does not exist" in missing.log()
    assert len(missing.log().strip().splitlines()) == 1


class NotUtf8(str):
    """A header key kafka-python writes as bytes that are not UTF-8 (its producer encodes str keys; other
    clients can write any bytes). kafka-python's consumer then fails to decode the whole record."""

    def encode(self, *args, **kwargs) -> bytes:
        return b"\xff\xfe"


def test_a_record_kafka_python_cannot_decode_is_named_and_stepped_over(kafka_bootstrap):
    prefix = unique_prefix("show")
    settings = make_topics(kafka_bootstrap, prefix)
    for topic in (settings.topic(topics.RIDE_REJECTED), settings.topic(topics.dead_letter_topic(topics.RIDE_DETAILS))):
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, client_id="tests-show")
        try:
            for value, headers in [(b"before", []), (b"broken", [(NotUtf8("k"), b"v")]), (b"after", [])]:
                producer.send(topic, key=b"k", value=value, headers=headers, partition=0).get(timeout=30)
        finally:
            producer.close()
    shown = run_dlq(kafka_bootstrap, prefix, "show", "ride_rejected", "--partition", "0")
    assert [line.split("value[")[1] for line in shown.stdout().splitlines()] == ["6 B]=before", "5 B]=after"]
    assert f"{prefix}ride_rejected[0]@1 cannot be read" in shown.log()
    listed = run_dlq(kafka_bootstrap, prefix, "list", "ride_details.dlq")
    assert [line.split()[0] for line in listed.stdout().splitlines()] == ["0", "2"]
    assert f"{prefix}ride_details.dlq[0]@1 cannot be read" in listed.log()
