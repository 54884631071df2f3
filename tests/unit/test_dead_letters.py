"""A dead letter always fits the producer's size limit: a record near Kafka's 1 MB limit is set aside truncated,
and says so; every other record's letter keeps its key, value and headers byte for byte."""

from __future__ import annotations

from kafka.consumer.fetcher import ConsumerRecord
from kafka.future import Future
from kafka.record.default_records import DefaultRecordBatchBuilder

from common import dead_letters
from common.dead_letters import OUR_HEADERS, REASON, TRUNCATED, DeadLetters, headers_for
from tools.letters import DeadLetter

LIMIT = 1_048_576  # kafka-python's default max_request_size


class Producer:
    """Records what DeadLetters sends, and refuses what kafka-python would refuse as too large."""

    def __init__(self, max_request_size: int = LIMIT) -> None:
        self.config = {"max_request_size": max_request_size}
        self.sent: list[tuple[str, bytes | None, bytes | None, list]] = []

    def send(self, topic, key=None, value=None, headers=None):
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        assert size <= self.config["max_request_size"], f"MessageSizeTooLargeError: {size} bytes"
        self.sent.append((topic, key, value, headers))
        return Future()


def record(key: bytes | None, value: bytes | None, headers=()) -> ConsumerRecord:
    return ConsumerRecord("p.ride_details", 1, -1, 77, 1_700_000_000_000, 0, key, value, list(headers),
                          None, 0, 0, 0)


def letter_of(source: ConsumerRecord, producer: Producer | None = None) -> tuple[str, bytes | None, bytes | None, list]:
    producer = producer or Producer()
    DeadLetters(producer, "transaction").send(source, "RideRequest invalid: not JSON")
    [sent] = producer.sent
    return sent


def test_a_normal_records_letter_keeps_key_value_and_headers_byte_for_byte():
    source = record(b"ride-1", b'{"ride_id": "x"}' * 1000, [("trace", b"t1"), ("other", b"\xff")])
    topic, key, value, headers = letter_of(source)
    assert topic == "p.ride_details.dlq"
    assert (key, value) == (source.key, source.value)
    assert headers[:2] == [("trace", b"t1"), ("other", b"\xff")]
    assert TRUNCATED not in dict(headers)
    assert dict(headers)[REASON] == b"RideRequest invalid: not JSON"


def test_a_letter_for_a_near_1mb_record_fits_the_limit_and_says_it_is_truncated():
    # Any default kafka-python producer can write this record: with our dlq.* headers it would not fit.
    source = record(b"k", b"x" * 1_048_400, [("trace", b"t" * 100)])
    topic, key, value, headers = letter_of(source)
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers) <= LIMIT
    assert key == b"k" and value and source.value.startswith(value) and len(value) < len(source.value)
    assert ("trace", b"t" * 100) not in headers  # the original headers are dropped to make room
    assert dict(headers)[TRUNCATED] == b"1048400"
    assert b"truncated" in dict(headers)[REASON] and b"RideRequest invalid: not JSON" in dict(headers)[REASON]


def test_a_huge_key_is_truncated_too():
    source = record(b"k" * 1_048_000, b"v" * 1000)
    _, key, value, headers = letter_of(source)
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers) <= LIMIT
    assert source.key.startswith(key) and dict(headers)[TRUNCATED] == b"1000"


def test_the_limit_is_the_producers_own():
    source = record(b"k", b"x" * 5000)
    _, _, value, headers = letter_of(source, Producer(max_request_size=4000))
    assert len(value) < 4000 and dict(headers)[TRUNCATED] == b"5000"


def test_a_truncated_letter_is_read_as_unusable_and_says_why():
    source = record(b"k", b"x" * 1_048_400)
    topic, key, value, headers = letter_of(source)
    letter = DeadLetter.parse(ConsumerRecord(topic, 0, -1, 3, 0, 0, key, value, headers, None, 0, 0, 0))
    assert not letter.usable
    assert any("truncated" in p and "1048400" in p for p in letter.problems), letter.problems


def test_a_forged_truncated_header_on_a_record_never_reaches_its_letter():
    assert TRUNCATED in OUR_HEADERS
    _, _, _, headers = letter_of(record(b"k", b"v", [(TRUNCATED, b"abc")]))
    assert TRUNCATED not in dict(headers)


def test_headers_for_names_every_header_we_own():
    names = {k for k, _ in dead_letters.headers_for(record(b"k", b"v"), "r", "g")}
    assert names <= set(OUR_HEADERS)


def test_a_header_without_a_value_is_kept_empty_so_the_letter_can_be_sent():
    # kafka-python refuses a header whose value is None, which any other producer may write: the consumer stopped.
    letter = headers_for(record(b"k", b"v", headers=[("x-none", None), ("x-set", b"1")]), "bad", "g")
    assert letter[:2] == [("x-none", b""), ("x-set", b"1")]
    assert all(isinstance(value, bytes) for _, value in letter)
