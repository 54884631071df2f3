"""ride_id is the idempotency key: transaction.py decides each ride once, however often it is requested.

rides.py run twice with one seed sends the same rides twice; a request reusing a decided ride_id with other
content is set aside; what was decided survives restarts and rebalances (the changelog), in both guarantees.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from common import dead_letters, schemas
from common.schemas import RideRequest
from tests.integration.pipeline import (
    Script,
    header,
    keys,
    parse_summary,
    produce_raw,
    read_all,
    read_until,
    unique_prefix,
    wait_until,
)
from tests.integration.test_transaction import (
    assert_exactly_once,
    expected_outcomes,
    run_rides,
    transaction_py,
    wait_for_outcomes,
)


@pytest.fixture
def prefix() -> str:
    return unique_prefix("once")


def decided_twice(bootstrap: str, prefix: str) -> dict[str, int]:
    outcomes = Counter(keys(read_all(bootstrap, prefix + "ride_confirmed", quiet=1)))
    outcomes.update(keys(read_all(bootstrap, prefix + "ride_rejected", quiet=1)))
    return {k: n for k, n in outcomes.items() if n > 1}


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_rides_sent_twice_with_one_seed_are_decided_once(guarantee, kafka_bootstrap, prefix, tmp_path):
    assert run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "10", "--seed", "42")["acknowledged"] == 10
    assert run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "10", "--seed", "42")["acknowledged"] == 10
    want_confirmed, want_rejected, in_details = expected_outcomes(kafka_bootstrap, prefix)
    assert in_details == 20 and len(want_confirmed | want_rejected) == 10
    with transaction_py(kafka_bootstrap, prefix, tmp_path, "--guarantee", guarantee) as tx:
        confirmed, rejected = wait_for_outcomes(kafka_bootstrap, prefix, len(want_confirmed), len(want_rejected))
        wait_until(lambda: "duplicate request dropped" in tx.log(), timeout=30, what="duplicates dropped")
        tx.stop()
    assert_exactly_once(confirmed, rejected, want_confirmed, want_rejected)
    summary = parse_summary(tx.log())
    assert (summary["confirmed"] + summary["rejected"], summary["duplicates"], summary["dead_lettered"]) == (10, 10, 0)


def test_another_request_under_a_decided_ride_id_is_set_aside_with_its_reason(kafka_bootstrap, prefix, tmp_path):
    run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "5", "--seed", "8")
    original = schemas.decode(RideRequest, *(lambda r: (r.key, r.value))(read_all(kafka_bootstrap,
                                                                                  prefix + "ride_details")[0]))
    impostor = original.model_copy(update={"customer_id": "cust-66666", "customer_email": "mallory@example.net",
                                           "customer_name": "Mallory"})
    key = schemas.ride_key(original.ride_id)
    produce_raw(kafka_bootstrap, prefix + "ride_details", [(key, schemas.encode(impostor)),
                                                           (key, schemas.encode(original))])
    with transaction_py(kafka_bootstrap, prefix, tmp_path) as tx:
        wait_until(lambda: "duplicates=" in tx.log() or parse_counts(tx.log()) >= 7, timeout=60,
                   what="7 requests handled")
        tx.stop()
    summary = parse_summary(tx.log())
    assert (summary["confirmed"] + summary["rejected"], summary["duplicates"], summary["dead_lettered"]) == (5, 1, 1)
    assert not decided_twice(kafka_bootstrap, prefix)
    confirmed = [schemas.decode(schemas.RideConfirmed, r.key, r.value)
                 for r in read_all(kafka_bootstrap, prefix + "ride_confirmed", quiet=1) if r.key == key]
    if confirmed:  # the first request's rider gets the ride, never the impostor
        assert confirmed[0].customer_email == original.customer_email
    [letter] = read_all(kafka_bootstrap, prefix + "ride_details.dlq", quiet=1)
    assert letter.key == key and json.loads(letter.value)["customer_id"] == "cust-66666"
    assert f"ride_id {original.ride_id} was already decided for a different request" in \
        header(letter, dead_letters.REASON)


def parse_counts(log: str) -> int:
    return log.count("duplicate request dropped") + log.count("set aside in")


def test_what_was_decided_survives_a_restart_and_a_rebalance(kafka_bootstrap, prefix, tmp_path):
    run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "300", "--seed", "9")
    want_confirmed, want_rejected, _ = expected_outcomes(kafka_bootstrap, prefix)
    with transaction_py(kafka_bootstrap, prefix, tmp_path) as first:
        wait_for_outcomes(kafka_bootstrap, prefix, len(want_confirmed), len(want_rejected))
        first.stop()
    # The same 300 rides again, now read by two new instances: partitions are restored from the changelog,
    # and one instance takes partitions from the other while the duplicates arrive.
    with transaction_py(kafka_bootstrap, prefix, tmp_path, "--instance", "a") as a:
        a.wait_for_log(r"restored \d+ decided rides", timeout=60)
        with transaction_py(kafka_bootstrap, prefix, tmp_path, "--instance", "b") as b:
            assert run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "300", "--seed", "9")["acknowledged"] == 300
            b.wait_for_log(r"restored \d+ decided rides", timeout=60)

            def all_dropped() -> bool:
                return a.log().count("duplicate request dropped") + b.log().count("duplicate request dropped") >= 300
            wait_until(all_dropped, timeout=120, what="300 duplicates dropped")
            b.stop()
        a.stop()
    assert not decided_twice(kafka_bootstrap, prefix)
    sa, sb = parse_summary(a.log()), parse_summary(b.log())
    assert sa["confirmed"] + sa["rejected"] + sb["confirmed"] + sb["rejected"] == 0
    assert sa["duplicates"] + sb["duplicates"] == 300


def test_a_ride_whose_decision_was_aborted_is_decided_when_read_again(kafka_bootstrap, prefix, tmp_path):
    # transaction.py killed with its first transaction open: the decided rides in it were written to the
    # changelog but never committed, so the next run must not take them for decided (they would be lost).
    run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "100", "--seed", "10")
    with Script("tests/integration/stalled_transaction.py", "kill", bootstrap=kafka_bootstrap, prefix=prefix,
                group_id=f"{prefix}transaction", log_dir=tmp_path) as victim:
        assert victim.wait(timeout=60, expect=None) == -signal.SIGKILL
    changelog = f"{prefix}{prefix}transaction-decided-changelog"
    written = read_all(kafka_bootstrap, changelog, quiet=1, isolation_level="read_uncommitted")
    assert written and not read_all(kafka_bootstrap, changelog, quiet=1)  # written, none committed
    want_confirmed, want_rejected, _ = expected_outcomes(kafka_bootstrap, prefix)
    with transaction_py(kafka_bootstrap, prefix, tmp_path) as tx:
        confirmed, rejected = wait_for_outcomes(kafka_bootstrap, prefix, len(want_confirmed), len(want_rejected))
        tx.stop()
    assert_exactly_once(confirmed, rejected, want_confirmed, want_rejected)
    assert parse_summary(tx.log())["duplicates"] == 0


def test_the_next_owner_remembers_the_last_batch_of_an_owner_that_stalled(kafka_bootstrap, prefix, tmp_path):
    # Instance a freezes just before committing a batch (a GC pause, a stalled VM): past the session timeout
    # its partitions go to b, and a's transaction is still pending when b takes them. b must not read the
    # changelog before that transaction is settled, or it forgets a's batch and decides its rides again
    # when they are requested again.
    args = dict(bootstrap=kafka_bootstrap, prefix=prefix, group_id=f"{prefix}transaction", log_dir=tmp_path)
    with Script("tests/integration/stalled_transaction.py", "stop", "--instance", "a", **args) as a, \
            transaction_py(kafka_bootstrap, prefix, tmp_path, "--instance", "b") as b:
        wait_until(lambda: "partitions assigned: " + prefix in a.log() and "partitions assigned: " + prefix in b.log(),
                   timeout=90, what="a and b sharing the partitions")
        run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "60", "--seed", "11")
        a.wait_for_log("stalled before commit_transaction", timeout=60)
        b.wait_for_log(r"partitions assigned: \S+\[0,1,2,3,4,5\]", timeout=60)  # a's session timed out
        time.sleep(3)  # b tries to restore a's partitions meanwhile
        a.process.send_signal(signal.SIGCONT)
        a.wait_for_log("committed after the stall", timeout=30)
        run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "60", "--seed", "11")  # every ride requested again
        wait_until(lambda: b.log().count("duplicate request dropped") >= 60, timeout=90, what="60 repeats dropped")
        b.stop()
    assert not decided_twice(kafka_bootstrap, prefix)
    outcomes = keys(read_all(kafka_bootstrap, prefix + "ride_confirmed", quiet=1))
    outcomes += keys(read_all(kafka_bootstrap, prefix + "ride_rejected", quiet=1))
    assert len(outcomes) == 60


def test_a_request_outside_its_keys_partition_is_set_aside(kafka_bootstrap, prefix, tmp_path):
    # The memory of decided rides is per partition: a producer that puts a ride's request elsewhere (an
    # explicit partition, another partitioner) would get it decided twice. It is refused instead.
    run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "5", "--seed", "12")
    [first, *_] = read_all(kafka_bootstrap, prefix + "ride_details")
    elsewhere = (first.partition + 1) % 6
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, client_id="tests-elsewhere")
    producer.send(prefix + "ride_details", key=first.key, value=first.value, partition=elsewhere).get(30)
    producer.close()
    with transaction_py(kafka_bootstrap, prefix, tmp_path) as tx:
        [letter] = read_until(kafka_bootstrap, prefix + "ride_details.dlq", lambda rs: len(rs) >= 1, quiet=1)
        wait_until(lambda: len(read_all(kafka_bootstrap, prefix + "ride_confirmed", quiet=0.5))
                   + len(read_all(kafka_bootstrap, prefix + "ride_rejected", quiet=0.5)) >= 5, timeout=60)
        tx.stop()
    assert not decided_twice(kafka_bootstrap, prefix)
    assert letter.key == first.key and f"in partition {elsewhere}, but its key belongs in partition " \
        f"{first.partition}" in header(letter, dead_letters.REASON)


def test_a_hostile_changelog_record_is_skipped_not_fatal(kafka_bootstrap, prefix, tmp_path):
    run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "5", "--seed", "13")
    with transaction_py(kafka_bootstrap, prefix, tmp_path) as tx:  # creates the changelog topic
        tx.wait_for_log(r"restored \d+ decided rides", timeout=60)
        tx.stop()
    changelog = f"{prefix}{prefix}transaction-decided-changelog"
    produce_raw(kafka_bootstrap, changelog, [(None, b"not json"), (b"x", b'{"v": 1, "rides": 7}')])
    assert run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "5", "--seed", "13")["acknowledged"] == 5
    with transaction_py(kafka_bootstrap, prefix, tmp_path) as tx:
        wait_until(lambda: tx.log().count("duplicate request dropped") >= 5, timeout=60, what="repeats dropped")
        tx.stop()
    assert tx.log().count("; skipped") == 2 and not decided_twice(kafka_bootstrap, prefix)


def test_a_longer_dedup_window_is_kept_on_disk_too(kafka_bootstrap, prefix, tmp_path):
    changelog = f"{prefix}{prefix}transaction-decided-changelog"
    for hours, ms in (("1", "3600000"), ("48", "172800000")):
        with transaction_py(kafka_bootstrap, prefix, tmp_path, "--dedup-hours", hours) as tx:
            tx.wait_for_log(r"partitions assigned: \S+\[", timeout=60)
            tx.stop()
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="tests-configs")
        try:
            configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, changelog)])
        finally:
            admin.close()
        assert configs["topic"][changelog]["retention.ms"]["value"] == ms, f"after --dedup-hours {hours}"
