"""rides.py and transaction.py as real subprocesses on a real broker: every ride's outcome exactly once.

Each test has its own topic prefix and consumer groups. Outcomes are read with read_committed, as the
pipeline's downstream consumers read them. What each ride's outcome must be is computed with the pure
functions (transaction.decide) from what is actually in ride_details.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import Counter
from datetime import datetime, timezone

import pytest

import transaction
from common import dead_letters, schemas
from common.schemas import RideConfirmed, RideRequest
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

NOW = datetime.now(timezone.utc)


# --------------------------------------------------------------------------------------- helpers


@pytest.fixture
def prefix() -> str:
    return unique_prefix("tx")


def run_rides(bootstrap: str, prefix: str, tmp_path, *args: str) -> dict:
    """rides.py to completion (--count ... given in args); returns its summary."""
    with Script("rides.py", *args, bootstrap=bootstrap, prefix=prefix, log_dir=tmp_path) as rides:
        rides.wait(timeout=120)
        return parse_summary(rides.log())


def transaction_py(bootstrap: str, prefix: str, tmp_path, *args: str) -> Script:
    return Script("transaction.py", *args, bootstrap=bootstrap, prefix=prefix, group_id=f"{prefix}transaction",
                  log_dir=tmp_path)


def expected_outcomes(bootstrap: str, prefix: str) -> tuple[set[str], set[str], int]:
    """From what is in ride_details: the ride ids to be confirmed, to be rejected, and the record count."""
    details = read_all(bootstrap, prefix + "ride_details")
    confirm: set[str] = set()
    reject: set[str] = set()
    for r in details:
        try:
            request = schemas.decode(RideRequest, r.key, r.value)
        except schemas.PoisonRecord:
            continue
        outcome = transaction.decide(request, NOW)
        (confirm if isinstance(outcome, RideConfirmed) else reject).add(str(request.ride_id))
    return confirm, reject, len(details)


def wait_for_outcomes(bootstrap: str, prefix: str, n_confirmed: int, n_rejected: int, timeout: float = 150):
    """Read ride_confirmed and ride_rejected (read_committed) until they hold that many distinct rides."""
    confirmed = read_until(bootstrap, prefix + "ride_confirmed", lambda rs: len(set(keys(rs))) >= n_confirmed,
                           timeout=timeout)
    rejected = read_until(bootstrap, prefix + "ride_rejected", lambda rs: len(set(keys(rs))) >= n_rejected,
                          timeout=timeout, quiet=1.0)
    return confirmed, rejected


def assert_exactly_once(confirmed, rejected, want_confirmed: set[str], want_rejected: set[str]) -> None:
    dup_c = {k: n for k, n in Counter(keys(confirmed)).items() if n > 1}
    dup_r = {k: n for k, n in Counter(keys(rejected)).items() if n > 1}
    assert not dup_c, f"{len(dup_c)} rides confirmed more than once, e.g. {list(dup_c.items())[:3]}"
    assert not dup_r, f"{len(dup_r)} rides rejected more than once, e.g. {list(dup_r.items())[:3]}"
    assert set(keys(confirmed)) == want_confirmed
    assert set(keys(rejected)) == want_rejected
    for r in confirmed:  # what downstream reads is a valid confirmation keyed by its ride
        assert schemas.decode(RideConfirmed, r.key, r.value).driver_id in transaction.DRIVERS


def assigned(log: str) -> set[int]:
    """The ride_details partitions of the last `partitions assigned:` line in a transaction.py log."""
    lines = [line for line in log.splitlines() if "partitions assigned:" in line]
    if not lines:
        return set()
    last = lines[-1].split("partitions assigned:", 1)[1]
    if "[" not in last:
        return set()
    return {int(p) for p in last.split("[", 1)[1].split("]", 1)[0].split(",") if p}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------- tests


def test_every_ride_is_confirmed_or_rejected_exactly_once(kafka_bootstrap, prefix, tmp_path):
    summary = run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "400", "--seed", "1")
    assert summary["requested"] == summary["acknowledged"] == 400 and summary["failed"] == 0
    want_confirmed, want_rejected, in_details = expected_outcomes(kafka_bootstrap, prefix)
    assert in_details == summary["acknowledged"]  # acknowledged means: in ride_details
    assert want_rejected, "seed 1 should produce a few requests outside the service area"

    with transaction_py(kafka_bootstrap, prefix, tmp_path) as tx:
        confirmed, rejected = wait_for_outcomes(kafka_bootstrap, prefix, len(want_confirmed), len(want_rejected))
        tx.stop()
    assert_exactly_once(confirmed, rejected, want_confirmed, want_rejected)
    tx_summary = parse_summary(tx.log())
    assert (tx_summary["confirmed"], tx_summary["rejected"], tx_summary["dead_lettered"]) == \
        (len(want_confirmed), len(want_rejected), 0)
    for r in rejected:
        rejection = schemas.decode(schemas.RideRejected, r.key, r.value)
        assert "outside the service area" in rejection.reason


def test_two_instances_split_the_partitions_and_confirm_every_ride_once(kafka_bootstrap, prefix, tmp_path):
    with transaction_py(kafka_bootstrap, prefix, tmp_path, "--instance", "0") as tx0, \
            transaction_py(kafka_bootstrap, prefix, tmp_path, "--instance", "1") as tx1:
        def split() -> bool:
            a, b = assigned(tx0.log()), assigned(tx1.log())
            return bool(a) and bool(b) and not (a & b) and a | b == set(range(6))

        wait_until(split, timeout=90, what="two instances sharing the 6 partitions of ride_details")
        summary = run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "600", "--seed", "2")
        want_confirmed, want_rejected, _ = expected_outcomes(kafka_bootstrap, prefix)
        confirmed, rejected = wait_for_outcomes(kafka_bootstrap, prefix, len(want_confirmed), len(want_rejected))
        tx0.stop()
        tx1.stop()
    assert summary["acknowledged"] == 600
    assert_exactly_once(confirmed, rejected, want_confirmed, want_rejected)
    s0, s1 = parse_summary(tx0.log()), parse_summary(tx1.log())
    assert s0["confirmed"] > 0 and s1["confirmed"] > 0, "both instances should have done part of the work"
    assert s0["confirmed"] + s1["confirmed"] == len(want_confirmed)
    assert s0["rejected"] + s1["rejected"] == len(want_rejected)


def test_sigterm_stops_cleanly_and_a_restart_reprocesses_nothing(kafka_bootstrap, prefix, tmp_path):
    totals: Counter = Counter()
    with Script("rides.py", "--rate", "150", "--seed", "3", bootstrap=kafka_bootstrap, prefix=prefix,
                log_dir=tmp_path) as rides:
        # First run: stopped mid-stream, while rides keep arriving.
        with transaction_py(kafka_bootstrap, prefix, tmp_path) as tx1:
            read_until(kafka_bootstrap, prefix + "ride_confirmed", lambda rs: len(rs) >= 50, quiet=0)
            tx1.stop()  # SIGTERM: exit 0 within 10 s, its last batch committed
        totals.update(parse_summary(tx1.log()))
        # Second run: picks up where the first stopped; rides.py is stopped meanwhile.
        with transaction_py(kafka_bootstrap, prefix, tmp_path) as tx2:
            tx2.wait_for_log(r"partitions assigned: \S+\[", timeout=60)
            time.sleep(2)
            rides.stop()
            acknowledged = parse_summary(rides.log())["acknowledged"]
            want_confirmed, want_rejected, in_details = expected_outcomes(kafka_bootstrap, prefix)
            assert in_details == acknowledged
            confirmed, rejected = wait_for_outcomes(kafka_bootstrap, prefix, len(want_confirmed), len(want_rejected))
            tx2.stop()
        totals.update(parse_summary(tx2.log()))
    assert_exactly_once(confirmed, rejected, want_confirmed, want_rejected)
    assert (totals["confirmed"], totals["rejected"]) == (len(want_confirmed), len(want_rejected))

    # Third run: everything is committed, so nothing is processed again.
    with transaction_py(kafka_bootstrap, prefix, tmp_path) as tx3:
        tx3.wait_for_log(r"partitions assigned: \S+\[", timeout=60)
        time.sleep(3)
        tx3.stop()
    s3 = parse_summary(tx3.log())
    assert (s3["confirmed"], s3["rejected"], s3["dead_lettered"]) == (0, 0, 0)
    assert len(read_all(kafka_bootstrap, prefix + "ride_confirmed", quiet=1)) == len(want_confirmed)


def test_malformed_records_are_dead_lettered_and_rides_after_them_confirmed(kafka_bootstrap, prefix, tmp_path):
    # rides.py first, so that the topics exist; then the malformed records; then more rides after them.
    run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "50", "--seed", "4")
    wrong_schema_key = str(uuid.uuid4()).encode()
    bad = [(b"not-a-ride", b"this is {not json"), (wrong_schema_key, b'{"hello": "world", "schema_version": 1}')]
    produce_raw(kafka_bootstrap, prefix + "ride_details", bad, headers=[("origin", b"test")])
    run_rides(kafka_bootstrap, prefix, tmp_path, "--count", "150", "--seed", "5")
    want_confirmed, want_rejected, in_details = expected_outcomes(kafka_bootstrap, prefix)
    assert in_details == 202

    with transaction_py(kafka_bootstrap, prefix, tmp_path) as tx:
        letters = read_until(kafka_bootstrap, prefix + "ride_details.dlq", lambda rs: len(rs) >= 2, quiet=1)
        confirmed, rejected = wait_for_outcomes(kafka_bootstrap, prefix, len(want_confirmed), len(want_rejected))
        tx.stop()
    assert_exactly_once(confirmed, rejected, want_confirmed, want_rejected)
    assert sorted((r.key, r.value) for r in letters) == sorted(bad)  # byte for byte, for a later replay
    reasons = {r.key: header(r, dead_letters.REASON) for r in letters}
    assert "Invalid JSON" in reasons[b"not-a-ride"]
    assert "ride_id" in reasons[wrong_schema_key] and "customer_id" in reasons[wrong_schema_key]
    for r in letters:
        assert header(r, dead_letters.SOURCE_TOPIC) == prefix + "ride_details"
        assert int(header(r, dead_letters.SOURCE_OFFSET)) >= 0
        assert header(r, dead_letters.GROUP) == f"{prefix}transaction"
        assert header(r, "origin") == "test"  # the original headers are kept
    assert parse_summary(tx.log())["dead_lettered"] == 2
    assert "ride_details[" in tx.log() and "set aside in" in tx.log()  # names topic[partition]@offset


@pytest.mark.chaos  # `make chaos`, with the other crash and outage runs
def test_kill_9_mid_stream_still_exactly_once(kafka_bootstrap, prefix, tmp_path):
    with Script("rides.py", "--count", "900", "--rate", "150", "--seed", "6", bootstrap=kafka_bootstrap,
                prefix=prefix, log_dir=tmp_path) as rides:
        for at_least in (60, 250):
            with transaction_py(kafka_bootstrap, prefix, tmp_path) as victim:
                read_until(kafka_bootstrap, prefix + "ride_confirmed", lambda rs, n=at_least: len(rs) >= n, quiet=0)
                victim.kill()  # SIGKILL: no abort, no commit, an open transaction left behind
        rides.wait(timeout=120)
        assert parse_summary(rides.log())["acknowledged"] == 900
    want_confirmed, want_rejected, in_details = expected_outcomes(kafka_bootstrap, prefix)
    assert in_details == 900
    # The same --instance: its init_transactions() fences the killed one and aborts what it left open.
    with transaction_py(kafka_bootstrap, prefix, tmp_path) as tx:
        confirmed, rejected = wait_for_outcomes(kafka_bootstrap, prefix, len(want_confirmed), len(want_rejected))
        tx.stop()
    assert_exactly_once(confirmed, rejected, want_confirmed, want_rejected)


@pytest.mark.chaos
def test_broker_restart_mid_stream_loses_nothing(kafka_bootstrap, restart_broker, prefix, tmp_path):
    with Script("rides.py", "--count", "800", "--rate", "100", "--seed", "7", bootstrap=kafka_bootstrap,
                prefix=prefix, log_dir=tmp_path) as rides, \
            transaction_py(kafka_bootstrap, prefix, tmp_path) as tx:
        read_until(kafka_bootstrap, prefix + "ride_confirmed", lambda rs: len(rs) >= 100, quiet=0)
        assert restart_broker() == kafka_bootstrap
        rides.wait(timeout=180)
        summary = parse_summary(rides.log())
        want_confirmed, want_rejected, in_details = expected_outcomes(kafka_bootstrap, prefix)
        assert in_details == summary["acknowledged"] == 800
        confirmed, rejected = wait_for_outcomes(kafka_bootstrap, prefix, len(want_confirmed), len(want_rejected),
                                                timeout=240)
        assert tx.running, "transaction.py should have recovered by itself"
        tx.stop()
    assert_exactly_once(confirmed, rejected, want_confirmed, want_rejected)


@pytest.mark.parametrize("script", ["rides.py", "transaction.py"])
def test_no_broker_is_one_line_and_a_non_zero_exit(script, tmp_path):
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    with Script(script, "--wait", "2", bootstrap=nowhere, log_dir=tmp_path) as s:
        code = s.wait(timeout=60, expect=None)
    log = s.log()
    assert code != 0
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Kafka is unreachable" in errors[0] and nowhere in errors[0], log
