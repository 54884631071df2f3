"""The memory of decided rides (common.decided) and what makes two requests the same (transaction.py)."""

import random
import uuid
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord

import transaction
from common import transform
from common.changelog import Changelog
from common.decided import BadChangelogRecord, DecidedRides, decode_entries, encode_entries, home_partition, murmur2
from common.schemas import Place
from tests.unit.strategies import ride_requests
from tests.unit.test_transaction import NOW, request

HOUR = 3_600_000
A, B, C = (uuid.UUID(int=n, version=4) for n in (1, 2, 3))


def test_a_staged_decision_is_seen_at_once_and_kept_only_once_committed():
    store = DecidedRides(window_ms=HOUR)
    store.stage(0, A, "fa")
    assert store.lookup(0, A) == "fa"  # a second request for A in the same batch is a repeat
    assert store.lookup(1, A) is None  # partitions are apart: A's requests all land in one
    store.commit(decided_at_ms=1000)
    assert store.lookup(0, A) == "fa" and len(store) == 1 and store.staged() == {}


def test_an_aborted_batch_leaves_its_rides_undecided():
    store = DecidedRides(window_ms=HOUR)
    store.apply(0, {A: "fa"}, 1000)
    store.stage(0, B, "fb")
    assert store.staged() == {0: {B: "fb"}}  # what goes to the changelog with the batch
    store.discard()
    assert store.lookup(0, B) is None and store.lookup(0, A) == "fa"


def test_prune_forgets_what_was_decided_before_the_window_and_nothing_after():
    store = DecidedRides(window_ms=HOUR)
    store.apply(0, {A: "fa"}, 0)
    store.apply(0, {B: "fb"}, HOUR // 2)
    store.apply(1, {C: "fc"}, HOUR)
    assert store.prune(now_ms=HOUR + HOUR // 4) == 1
    assert store.lookup(0, A) is None and store.lookup(0, B) == "fb" and store.lookup(1, C) == "fc"
    assert store.prune(now_ms=3 * HOUR) == 2 and len(store) == 0


def test_forget_drops_partitions_another_instance_now_owns():
    store = DecidedRides(window_ms=HOUR)
    store.apply(0, {A: "fa"}, 0)
    store.apply(1, {B: "fb"}, 0)
    store.stage(1, C, "fc")
    store.forget({1})
    assert store.lookup(0, A) == "fa" and store.lookup(1, B) is None and store.staged() == {}


def test_changelog_records_round_trip_and_a_foreign_one_is_refused_in_one_line():
    entries = {A: "0123456789abcdef", B: "fedcba9876543210"}
    assert decode_entries(encode_entries(entries)) == entries
    for bad in (None, b"", b"not json", b"[]", b'{"v": 2, "rides": {}}', b'{"v": 1, "rides": {"x": "y"}}',
                b'{"v": 1}'):
        with pytest.raises(BadChangelogRecord) as e:
            decode_entries(bad)
        assert "\n" not in str(e.value)


def test_one_batch_of_500_rides_fits_easily_in_one_record():
    value = encode_entries({uuid.uuid4(): "0123456789abcdef" for _ in range(500)})
    assert len(value) < 64 * 1024  # a batch is at most max_poll_records: far below the broker's 1 MB


# ------------------------------------------------------------------------------ the same request?


def test_a_retry_stamped_later_or_naming_zones_otherwise_is_the_same_request():
    first = request()
    retry = first.model_copy(update={
        "requested_at": NOW + timedelta(minutes=3),
        "pickup": first.pickup.model_copy(update={"zone": "somewhere the client calls it"})})
    assert transaction.fingerprint(retry) == transaction.fingerprint(first)
    assert transform.repeat_reason(retry, transaction.fingerprint(first), transaction.fingerprint(retry)) is None


@pytest.mark.parametrize("change", [
    {"customer_id": "cust-99999"},
    {"customer_email": "someone.else@example.org"},
    {"customer_name": "Somebody Else"},
    {"passengers": 2},
    {"dropoff": Place(lat=40.7484, lon=-73.9857, zone="Midtown")},
])
def test_anything_else_changed_is_another_request_and_is_refused_with_its_reason(change):
    first = request()
    other = first.model_copy(update=change)
    reason = transform.repeat_reason(other, transaction.fingerprint(first), transaction.fingerprint(other))
    assert reason and str(first.ride_id) in reason and "already decided" in reason


@given(ride_requests)
def test_every_valid_request_has_a_fingerprint(req):
    assert len(transaction.fingerprint(req)) == 16


# ------------------------------------------------------------------------- partitions and changelog


class _Cluster:
    def __init__(self, n: int) -> None:
        self.n = n

    def topics(self):
        return {"t"}

    def partitions_for_topic(self, topic):
        return set(range(self.n))

    available_partitions_for_topic = partitions_for_topic


@pytest.mark.parametrize("partitions", [1, 3, 6, 7])
def test_home_partition_is_where_kafkas_default_partitioner_puts_the_key(partitions):
    from kafka.partitioner.default import DefaultPartitioner

    for key in (str(uuid.UUID(int=n, version=4)).encode() for n in range(200)):
        assert home_partition(key, partitions) == \
            DefaultPartitioner().partition("t", None, key, None, None, _Cluster(partitions))


@given(st.binary(max_size=100))
def test_murmur2_is_kafkas(key):
    # home_partition's own murmur2 (a faster one) must put every key where Kafka's partitioner does.
    from kafka.partitioner.default import murmur2 as kafkas

    assert murmur2(key) == kafkas(key)


def test_murmur2_is_kafkas_at_every_length():
    from kafka.partitioner.default import murmur2 as kafkas

    rng = random.Random(9)
    for length in range(101):
        for _ in range(20):
            key = rng.randbytes(length)
            assert murmur2(key) == kafkas(key), key


def test_restore_skips_unusable_records_and_rides_of_other_partitions():
    store = DecidedRides(window_ms=HOUR)
    changelog = Changelog(None, "src", "log", store, None, "test")
    ours = next(u for u in (uuid.uuid4() for _ in range(100)) if home_partition(str(u).encode(), 6) == 2)
    theirs = next(u for u in (uuid.uuid4() for _ in range(100)) if home_partition(str(u).encode(), 6) != 2)

    def record(value: bytes):
        return ConsumerRecord("log", 2, -1, 7, 1000, 0, None, value, [], None, -1, len(value), -1)

    assert changelog._apply(record(b"not json"), 6) == 0
    assert changelog._apply(record(encode_entries({ours: "f1", theirs: "f2"})), 6) == 1
    assert store.lookup(2, ours) == "f1" and store.lookup(2, theirs) is None
    assert changelog.skipped == 2


def test_a_group_id_that_cannot_name_the_changelog_topic_is_refused():
    transaction.TransactionSettings(group_id="transaction")  # the default names a valid topic
    for group, prefix in (("tx group", ""), ("g" * 150, "p" * 95), ("tx/1", "")):
        with pytest.raises(ValueError, match="changelog topic"):
            transaction.TransactionSettings(group_id=group, topic_prefix=prefix)
