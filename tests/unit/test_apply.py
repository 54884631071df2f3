"""The consume-and-apply loop's pieces without a broker (common.apply): the per-record rule (what is set aside,
what stops), the order of a batch's commit, and resuming from a store's own offsets."""

from __future__ import annotations

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.future import Future
from kafka.structs import OffsetAndMetadata, TopicPartition

from common import apply, consume, schemas
from common.dead_letters import REASON, DeadLetters
from common.errors import Fatal, PoisonRecord, Stopped
from tests.unit.test_email import ride

TOPIC = "p.ride_confirmed"
TP0 = TopicPartition(TOPIC, 0)


def record(value: bytes | None, key: bytes | None = b"k", offset: int = 0, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord(TOPIC, partition, -1, offset, 0, 0, key, value, [], None, -1, -1, -1)


def good(offset: int, **changes) -> ConsumerRecord:
    r = ride(**changes)
    return record(schemas.encode(r), schemas.ride_key(r.ride_id), offset)


class Calls(list):
    """One list of what every fake did, in order: the commit order is what these tests check."""


class FakeProducer:
    def __init__(self, calls: Calls, fail: bool = False) -> None:
        self.calls, self.fail = calls, fail

    def send(self, topic, key=None, value=None, headers=None):
        self.calls.append(("dead letter", topic, dict(headers or [])[REASON].decode()))
        f = Future()
        return f.failure(Exception("broker gone")) if self.fail else f.success(None)

    def flush(self, timeout=None):
        self.calls.append(("flush",))


class FakeConsumer:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def commit(self, offsets):
        self.calls.append(("commit", {tp: om.offset for tp, om in offsets.items()}))


class RecordingStore(apply.Store):
    """Applies what decodes, refuses customer cust-bad (PoisonRecord), and fails on cust-disk as a broken
    disk would (OSError: the infrastructure's, not the record's)."""

    script = "test"

    def __init__(self, calls: Calls, resume_from: dict | None = None) -> None:
        self.calls, self.resume_from = calls, resume_from

    def apply(self, record, message):
        if message.customer_id == "cust-bad":
            raise PoisonRecord("refused by the store")
        if message.customer_id == "cust-disk":
            raise OSError("disk full")
        if message.customer_id == "cust-stop":
            raise Stopped()
        self.calls.append(("apply", record.offset))
        return ("applied",)

    def set_aside(self, record, message, reason):
        self.calls.append(("set aside", record.offset, message is not None))

    def save(self, offsets):
        self.calls.append(("save", dict(offsets)))


def applier(calls: Calls, store: apply.Store | None = None, fail: bool = False, stops=()) -> apply.Applier:
    stop = iter(stops)
    return apply.Applier(schemas.RideConfirmed, store or RecordingStore(calls),
                         DeadLetters(FakeProducer(calls, fail), "g"), lambda: next(stop, False))


def test_a_record_that_cannot_be_decoded_or_that_the_store_refuses_is_set_aside_and_the_batch_goes_on():
    calls = Calls()
    a = applier(calls)
    done, sends = a.apply([record(b"{not json", offset=0), good(1, customer_id="cust-bad"), good(2)])
    assert done == 3 and len(sends) == 2
    assert calls[0][:2] == ("set aside", 0) and calls[0][2] is False  # not decoded: no message
    assert calls[1][:2] == ("dead letter", "p.ride_confirmed.dlq") and "invalid" in calls[1][2]
    assert calls[2:4] == [("set aside", 1, True), ("dead letter", "p.ride_confirmed.dlq", "refused by the store")]
    assert calls[4] == ("apply", 2)
    assert (a.tally["applied"], a.tally["dead_lettered"]) == (1, 2)


def test_a_failure_of_the_infrastructure_is_not_the_records_it_stops_the_loop_and_nothing_is_set_aside():
    calls = Calls()
    with pytest.raises(OSError, match="disk full"):
        applier(calls).apply([good(0), good(1, customer_id="cust-disk"), good(2)])
    assert calls == [("apply", 0)]


def test_a_stop_between_or_inside_records_ends_the_batch_with_the_records_done_so_far():
    calls = Calls()
    assert applier(calls, stops=[False, True]).apply([good(0), good(1), good(2)]) == (1, [])
    assert applier(calls).apply([good(3), good(4, customer_id="cust-stop"), good(5)]) == (1, [])
    assert calls == [("apply", 0), ("apply", 3)]


def test_records_already_in_the_stores_saved_state_are_skipped():
    calls = Calls()
    store = RecordingStore(calls, resume_from={TP0: 2})
    assert applier(calls, store).apply([good(1), good(2), good(3)]) == (3, [])
    assert calls == [("apply", 2), ("apply", 3)]


def test_the_store_sees_the_whole_batch_before_its_first_record_is_applied():
    class BatchStore(RecordingStore):  # email.py looks a batch's rides up in its ledger at once, not per email
        def begin(self, records):
            self.calls.append(("begin", [r.offset for r in records]))

    calls = Calls()
    applier(calls, BatchStore(calls)).apply([good(0), good(1)])
    assert calls == [("begin", [0, 1]), ("apply", 0), ("apply", 1)]


def test_a_batch_is_committed_in_order_dead_letters_stored_then_the_store_saved_then_the_offsets():
    calls = Calls()
    store = RecordingStore(calls, resume_from={})
    a = applier(calls, store)
    batch = [good(5), good(6, customer_id="cust-bad"), good(7)]
    done, sends = a.apply(batch)
    del calls[:]
    apply.commit_in_order(FakeProducer(calls), sends, store, FakeConsumer(calls), batch[:done])
    assert calls == [("flush",), ("save", {TP0: 8}), ("commit", {TP0: 8})]


def test_a_dead_letter_the_broker_did_not_take_stops_the_script_before_anything_is_saved_or_committed():
    calls = Calls()
    store = RecordingStore(calls, resume_from={})
    batch = [good(0, customer_id="cust-bad"), good(1)]
    done, sends = applier(calls, store, fail=True).apply(batch)
    del calls[:]
    with pytest.raises(Fatal, match=r"1 dead letters could not be stored \(broker gone\); stopping without saving"):
        apply.commit_in_order(FakeProducer(calls), sends, store, FakeConsumer(calls), batch[:done])
    assert calls == [("flush",)]


def test_a_batch_stopped_before_its_first_record_commits_nothing():
    calls = Calls()
    apply.commit_in_order(FakeProducer(calls), [], RecordingStore(calls), FakeConsumer(calls), [])
    assert calls == [("flush",)]


# ------------------------------------------------------------------------------------ resuming


def test_records_the_saved_state_already_includes_are_unseen_ones_only():
    batch = [record(b"", offset=3), record(b"", offset=4), record(b"", offset=5), record(b"", partition=1)]
    assert [(r.partition, r.offset) for r in apply.unseen(batch, {TP0: 5})] == [(0, 5), (1, 0)]


def test_saved_offsets_never_go_backwards():
    tp1 = TopicPartition(TOPIC, 1)
    assert apply.advance({TP0: 10}, [record(b"", offset=3), record(b"", offset=7, partition=1)]) == {TP0: 10, tp1: 8}


def test_offsets_to_commit_are_the_next_to_read():
    from common.consume import next_offsets
    assert next_offsets([record(b"", offset=3), record(b"", offset=4)]) == {TP0: OffsetAndMetadata(5, "", -1)}


def test_a_forged_unreadable_header_without_a_value_is_that_records_reason_not_a_crash():
    # Any producer can write the stand-in's header: with no value it once raised AttributeError in decode, which
    # stopped the consumer (and api.py's follower) at every restart.
    forged = ConsumerRecord(TOPIC, 0, -1, 5, 0, 0, None, b"", [(consume.UNREADABLE, None)], None, -1, -1, -1)
    with pytest.raises(PoisonRecord, match="^unreadable record$"):
        consume.decode(schemas.RideConfirmed, forged)
