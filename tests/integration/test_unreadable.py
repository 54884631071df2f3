"""A record kafka-python cannot read (here: a header key that is not UTF-8, which any client can write)
makes poll() raise at every attempt. Each consumer sets it aside, with the reason, and goes on.
"""

from __future__ import annotations

from collections import Counter

from kafka import KafkaProducer

from common import consume
from common.dead_letters import GROUP, REASON, SOURCE_OFFSET
from tests.integration.pipeline import Script, header, parse_summary, read_until, unique_prefix, wait_until
from tests.integration.test_consumers import as_records, confirmed_rides
from tests.integration.test_transaction import run_rides, transaction_py


class NotUtf8(str):
    """A header key kafka-python writes as raw bytes that are not UTF-8: readers cannot decode it."""

    def encode(self, *args, **kwargs) -> bytes:
        return b"\xff\xfe"


def produce_unreadable(bootstrap: str, topic: str, key: bytes) -> int:
    """One unreadable record on partition 0; returns its offset."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="tests-unreadable")
    try:
        meta = producer.send(topic, key=key, value=b"{}", partition=0, headers=[(NotUtf8("x"), b"1")]).get(30)
        return meta.offset
    finally:
        producer.close()


def produce_to_partition_0(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="tests-unreadable")
    try:
        for f in [producer.send(topic, key=k, value=v, partition=0) for k, v in records]:
            f.get(30)
    finally:
        producer.close()


def test_transaction_py_sets_an_unreadable_request_aside_and_decides_the_rest(kafka_bootstrap, tmp_path):
    prefix = unique_prefix("unreadable")
    run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "20", "--seed", "11")
    offset = produce_unreadable(kafka_bootstrap, prefix + "ride_details", b"bad")
    run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "20", "--seed", "12")
    with transaction_py(kafka_bootstrap, prefix, tmp_path) as tx:
        [letter] = read_until(kafka_bootstrap, prefix + "ride_details.dlq", lambda rs: len(rs) >= 1, quiet=1)
        wait_until(lambda: "confirmed=" in tx.log() and tx.running, timeout=30)
        outcomes = read_until(kafka_bootstrap, prefix + "ride_confirmed", lambda rs: len(rs) >= 36, quiet=2)
        tx.stop()
    assert int(header(letter, SOURCE_OFFSET)) == offset
    assert "kafka-python cannot read this record" in header(letter, REASON)
    summary = parse_summary(tx.log())
    assert summary["dead_lettered"] == 1 and summary["confirmed"] + summary["rejected"] == 40
    assert max(Counter(r.key for r in outcomes).values()) == 1


def test_email_and_analysis_set_an_unreadable_confirmation_aside_and_go_on(kafka_bootstrap, tmp_path):
    prefix = unique_prefix("unreadable")
    source = prefix + "ride_confirmed"
    before, after = confirmed_rides(10, seed=21), confirmed_rides(10, seed=22)
    outbox, state = tmp_path / "outbox", tmp_path / "analysis.db"
    args = dict(bootstrap=kafka_bootstrap, prefix=prefix, log_dir=tmp_path)
    with Script("email.py", "--outbox", str(outbox), group_id=prefix + "email", **args) as email, \
            Script("analysis.py", "--state", str(state), group_id=prefix + "analysis", **args) as analyser:
        email.wait_for_log(r"partitions assigned: \S+\[")
        produce_to_partition_0(kafka_bootstrap, source, as_records(before))
        offset = produce_unreadable(kafka_bootstrap, source, b"bad")
        produce_to_partition_0(kafka_bootstrap, source, as_records(after))
        wait_until(lambda: len(list(outbox.glob("*.eml"))) == 20, timeout=60, what="20 rides emailed")
        letters = read_until(kafka_bootstrap, source + ".dlq", lambda rs: len(rs) >= 2, quiet=1)
        email.stop()
        analyser.stop()
    assert sorted(header(r, GROUP) for r in letters) == [prefix + "analysis", prefix + "email"]
    assert all(int(header(r, SOURCE_OFFSET)) == offset and consume.UNREADABLE in dict(r.headers) for r in letters)
    assert parse_summary(email.log())["emailed"] == 20 and parse_summary(email.log())["dead_lettered"] == 1
    assert parse_summary(analyser.log())["total"] == 20 and parse_summary(analyser.log())["dead_lettered"] == 1
