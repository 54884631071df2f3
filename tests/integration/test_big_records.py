"""A record near Kafka's 1 MB limit, which any default producer can write, leaves no room for our dlq.* headers:
each consumer sets it aside truncated (dlq.truncated, with the reason) and goes on with the rides around it.
"""

from __future__ import annotations

from common.dead_letters import GROUP, REASON, SOURCE_OFFSET, TRUNCATED
from tests.integration.pipeline import Script, header, parse_summary, produce_raw, read_until, unique_prefix, wait_until
from tests.integration.test_consumers import as_records, confirmed_rides
from tests.integration.test_transaction import (
    assert_exactly_once,
    expected_outcomes,
    run_rides,
    transaction_py,
    wait_for_outcomes,
)

# With a 3-byte key, 90 bytes under kafka-python's default max_request_size (1,048,576): the record is
# accepted, its dead letter with the original bytes and our headers would not be.
BIG = 1_048_400


def produce_big(bootstrap: str, topic: str) -> None:
    produce_raw(bootstrap, topic, [(b"big", b"x" * BIG)])


def assert_truncated_letter(letter) -> None:
    assert header(letter, TRUNCATED) == str(BIG)
    assert "set aside truncated" in (header(letter, REASON) or "")
    assert letter.key == b"big" and 0 < len(letter.value) < BIG


def test_transaction_py_sets_a_near_1mb_request_aside_and_decides_every_ride_once(kafka_bootstrap, tmp_path):
    prefix = unique_prefix("big")
    run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "20", "--seed", "31")
    produce_big(kafka_bootstrap, prefix + "ride_details")
    run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "20", "--seed", "32")
    want_confirmed, want_rejected, in_details = expected_outcomes(kafka_bootstrap, prefix)
    assert in_details == 41
    with transaction_py(kafka_bootstrap, prefix, tmp_path) as tx:
        [letter] = read_until(kafka_bootstrap, prefix + "ride_details.dlq", lambda rs: len(rs) >= 1, quiet=1,
                              timeout=60)
        confirmed, rejected = wait_for_outcomes(kafka_bootstrap, prefix, len(want_confirmed), len(want_rejected),
                                                timeout=60)
        assert tx.running
        tx.stop()
    assert_truncated_letter(letter)
    assert_exactly_once(confirmed, rejected, want_confirmed, want_rejected)
    summary = parse_summary(tx.log())
    assert (summary["confirmed"], summary["rejected"], summary["dead_lettered"]) == \
        (len(want_confirmed), len(want_rejected), 1)


def test_email_and_analysis_set_a_near_1mb_confirmation_aside_and_go_on(kafka_bootstrap, tmp_path):
    prefix = unique_prefix("big")
    source = prefix + "ride_confirmed"
    args = dict(bootstrap=kafka_bootstrap, prefix=prefix, log_dir=tmp_path)
    outbox, state = tmp_path / "outbox", tmp_path / "analysis.db"
    with Script("email.py", "--outbox", str(outbox), group_id=prefix + "email", **args) as email, \
            Script("analysis.py", "--state", str(state), group_id=prefix + "analysis", **args) as analyser:
        email.wait_for_log(r"partitions assigned: \S+\[")
        produce_raw(kafka_bootstrap, source, as_records(confirmed_rides(10, seed=41)))
        produce_big(kafka_bootstrap, source)
        produce_raw(kafka_bootstrap, source, as_records(confirmed_rides(10, seed=42)))
        letters = read_until(kafka_bootstrap, source + ".dlq", lambda rs: len(rs) >= 2, quiet=1, timeout=60)
        wait_until(lambda: len(list(outbox.glob("*.eml"))) == 20, timeout=60, what="20 rides emailed")
        assert email.running and analyser.running
        email.stop()
        analyser.stop()
    assert sorted(header(r, GROUP) for r in letters) == [prefix + "analysis", prefix + "email"]
    assert header(letters[0], SOURCE_OFFSET) == header(letters[1], SOURCE_OFFSET)
    for letter in letters:
        assert_truncated_letter(letter)
    assert parse_summary(email.log())["emailed"] == 20 and parse_summary(email.log())["dead_lettered"] == 1
    assert parse_summary(analyser.log())["total"] == 20 and parse_summary(analyser.log())["dead_lettered"] == 1
