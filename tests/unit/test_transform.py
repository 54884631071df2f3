"""The consume-transform-produce loop's pieces without a broker (common.transform): the per-record rule, the
order of a batch's commit in both guarantees, and what a failed batch leaves behind. (The same code against a
real broker, crashes included: tests/integration/test_transaction.py, test_decided_once.py, test_chaos.py.)"""

from __future__ import annotations

import random
import time
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Literal

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, ProducerFencedError
from kafka.future import Future
from kafka.structs import TopicPartition

import rides
import transaction
from common import loop, schemas, topics, transform
from common.changelog import Changelog
from common.dead_letters import DeadLetters
from common.decided import DecidedRides, home_partition
from common.errors import Fatal, Stopped
from common.settings import TransformSettings
from common.shutdown import Shutdown

SOURCE = "p.ride_details"
PARTITIONS = 6
NOW = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


class FakeProducer:
    def __init__(self, calls: list, fail_on: str | None = None) -> None:
        self.calls, self.fail_on = calls, fail_on
        self.sent: list[tuple] = []  # (topic, key, partition) of every send
        self.config = {"transaction_timeout_ms": 15000, "max_request_size": 1048576}

    def _call(self, name: str, *args):
        self.calls.append((name, *args))
        if name == self.fail_on:
            raise KafkaConnectionError(f"{name} failed")

    def begin_transaction(self):
        self._call("begin")

    def send(self, topic, key=None, value=None, headers=None, partition=None):
        self._call("send", topic)
        self.sent.append((topic, key, partition))
        return Future().success(None)

    def partitions_for(self, topic):
        return set(range(topics.PARTITIONS[topic.removeprefix("p.")]))

    def flush(self, timeout=None):
        self._call("flush")

    @property
    def _transaction_manager(self):  # what common.transform sends its transactional requests through
        return Transactions(self)

    @property
    def _sender(self):
        return SimpleNamespace(wakeup=lambda: None)


class Result:
    """A transactional request's result, as kafka-python's TransactionManager returns it: wait() raises its
    error, or says whether it is done."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def wait(self, timeout_ms=None) -> bool:
        if self.error is not None:
            raise self.error
        return True


class Transactions:
    def __init__(self, producer: FakeProducer) -> None:
        self.producer = producer

    def _request(self, name: str, *args) -> Result:
        try:
            self.producer._call(name, *args)
        except KafkaConnectionError as e:
            return Result(e)
        return Result()

    def send_offsets_to_transaction(self, offsets, metadata):
        return self._request("offsets", {tp.partition: om.offset for tp, om in offsets.items()})

    def begin_commit(self):
        return self._request("commit")

    def begin_abort(self):
        return self._request("abort")


class FakeConsumer:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def partitions_for_topic(self, topic):
        return set(range(PARTITIONS))

    def group_metadata(self):
        return "metadata"

    def commit(self, offsets):
        self.calls.append(("commit offsets", {tp.partition: om.offset for tp, om in offsets.items()}))

    def assignment(self):
        return {TopicPartition(SOURCE, p) for p in range(PARTITIONS)}

    def committed(self, tp):
        return 0

    def seek(self, tp, offset):
        self.calls.append(("seek", tp.partition, offset))


def transform_loop(calls: list, guarantee: Literal["exactly-once", "at-least-once"] = "exactly-once",
                   fail_on: str | None = None) -> transform.TransformLoop:
    """A TransformLoop on fake clients (no broker: its constructor would connect)."""
    t = transform.TransformLoop.__new__(transform.TransformLoop)
    t.settings = TransformSettings(group_id="g", topic_prefix="p.", guarantee=guarantee)
    t.shutdown, t.model, t.transform, t.fingerprint = Shutdown(), schemas.RideRequest, transaction.outputs, \
        transaction.fingerprint
    t.exactly_once, t.source, t.tally, t.pending = guarantee == "exactly-once", SOURCE, loop.Tally(), loop.Tally()
    t.in_transaction, t.step = False, "cannot be confirmed"
    t.watch, t.requested = None, []
    t.producer, t.consumer = FakeProducer(calls, fail_on), FakeConsumer(calls)
    t.dead_letters = DeadLetters(t.producer, "g")
    t.decided = DecidedRides(t.settings.dedup_window_ms)
    t.changelog = Changelog(t.settings, SOURCE, "p.g-decided-changelog", t.decided, t.shutdown, "test")
    return t


def record_of(request, offset: int) -> ConsumerRecord:
    key = schemas.ride_key(request.ride_id)
    return ConsumerRecord(SOURCE, home_partition(key, PARTITIONS), -1, offset, 0, 0, key, schemas.encode(request),
                          [], None, -1, -1, -1)


def batch(n: int = 3, seed: int = 1) -> list[ConsumerRecord]:
    source = rides.rides(seed)
    return [record_of(next(source), offset) for offset in range(n)]


def names(calls: list) -> list[str]:
    return [c[0] for c in calls]


def test_exactly_once_outputs_decisions_and_offsets_go_in_one_transaction_in_that_order():
    calls: list = []
    records = batch(3)
    transform_loop(calls).commit(records)
    sent = [c[1] for c in calls if c[0] == "send"]
    assert names(calls)[0] == "begin" and names(calls)[-3:] == ["flush", "offsets", "commit"]
    assert len(sent) == 3 + len({r.partition for r in records})  # the outcomes, then one changelog record per partition
    assert set(sent[:3]) <= {"p.ride_confirmed", "p.ride_rejected"} and set(sent[3:]) == {"p.g-decided-changelog"}
    assert calls[-2][1] == {r.partition: r.offset + 1 for r in records}


def test_at_least_once_flushes_outputs_then_decisions_then_commits_the_offsets():
    calls: list = []
    records = batch(3)
    transform_loop(calls, "at-least-once").commit(records)
    assert "begin" not in names(calls)
    first_flush, last_flush = names(calls).index("flush"), len(calls) - 1 - names(calls)[::-1].index("flush")
    assert all(c[1] != "p.g-decided-changelog" for c in calls[:first_flush] if c[0] == "send")
    assert all(c[1] == "p.g-decided-changelog" for c in calls[first_flush:last_flush] if c[0] == "send")
    assert calls[-1] == ("commit offsets", {r.partition: r.offset + 1 for r in records})


def test_outputs_are_keyed_by_ride_and_go_where_the_default_partitioner_puts_their_key():
    t = transform_loop([])
    records = batch(300)
    t.commit(records)
    outputs = [s for s in t.producer.sent if s[0] in ("p.ride_confirmed", "p.ride_rejected")]
    assert sorted(key for _topic, key, _partition in outputs) == sorted(r.key for r in records)
    for topic, key, partition in outputs:
        count = topics.PARTITIONS[topic.removeprefix("p.")]
        assert partition in (None, home_partition(key, count))
        # Where the topic has as many partitions as ride_details, the partition is the record's own, given
        # (not hashed again by the producer).
        assert (partition is not None) == (count == PARTITIONS)


def test_the_same_request_again_is_dropped_and_a_different_one_under_its_ride_id_is_set_aside():
    calls: list = []
    t = transform_loop(calls, "at-least-once")
    first = next(rides.rides(7))
    changed = first.model_copy(update={"passengers": first.passengers % 4 + 1})
    t.commit([record_of(first, 0), record_of(first, 1), record_of(changed, 2)])
    assert (t.tally["confirmed"] + t.tally["rejected"], t.tally["duplicates"], t.tally["dead_lettered"]) == (1, 1, 1)
    assert [c[1] for c in calls if c[0] == "send"].count(topics.dead_letter_topic(SOURCE)) == 1


def test_a_record_in_the_wrong_partition_for_its_key_is_set_aside_not_decided():
    calls: list = []
    t = transform_loop(calls, "at-least-once")
    r = record_of(next(rides.rides(3)), 0)
    t.commit([r._replace(partition=(r.partition + 1) % PARTITIONS)])
    assert t.tally["dead_lettered"] == 1 and t.tally["confirmed"] + t.tally["rejected"] == 0


def test_a_record_that_does_not_decode_is_set_aside_and_the_rest_of_the_batch_is_decided():
    calls: list = []
    t = transform_loop(calls)
    records = batch(2)
    t.commit([records[0], records[1]._replace(value=b"{not json")])
    assert (t.tally["dead_lettered"], t.tally["confirmed"] + t.tally["rejected"]) == (1, 1)


def test_a_failed_batch_is_aborted_forgets_what_it_decided_and_rewinds():
    calls: list = []
    t = transform_loop(calls, fail_on="commit")
    records = batch(3)
    with pytest.raises(KafkaError):
        t.commit(records)
    t.recover(records, KafkaConnectionError("commit failed"), started=time.monotonic())
    assert names(calls)[-1 - PARTITIONS:] == ["abort"] + ["seek"] * PARTITIONS
    assert len(t.decided) == 0 and t.decided.staged() == {}  # read again: not decided yet
    assert t.tally["aborted"] == 1 and t.tally["batches"] == 0


def test_fenced_within_the_transaction_timeout_means_another_instance_and_stops_with_one_line():
    t = transform_loop([])
    t.in_transaction = True
    with pytest.raises(Fatal, match=r"fenced: another instance runs with transactional.id p.g-0"):
        t.recover(batch(1), ProducerFencedError(), started=time.monotonic())


def test_a_stop_while_kafka_does_not_take_the_outputs_gives_up_on_the_batch(monkeypatch):
    calls: list = []
    t = transform_loop(calls, fail_on=None)
    t.producer.flush = lambda timeout=None: (_ for _ in ()).throw(KafkaTimeoutError())
    monkeypatch.setattr(transform, "STOP_GRACE", 0.0)
    monkeypatch.setattr(transform.reachability, "check", lambda client: None)
    t.shutdown.request()
    with pytest.raises(Stopped):
        t.commit(batch(1))


@pytest.mark.parametrize("stuck", ["offsets", "commit"])
def test_a_transactional_request_kafka_does_not_answer_notices_the_outage_and_hears_a_stop(monkeypatch, stuck):
    # Seen in the suite: the broker went away while transaction.py committed a batch; KafkaProducer's
    # commit_transaction() waits with no timeout, so for 60 s its /healthz said "stuck" instead of "Kafka
    # unreachable", and a SIGTERM then would not have been heard until Kafka came back.
    calls: list = []
    t = transform_loop(calls, fail_on=None)

    class Pending(Result):
        def wait(self, timeout_ms=None) -> bool:
            calls.append(("waited", timeout_ms))
            return False  # not answered within the step

    request = Transactions._request
    monkeypatch.setattr(Transactions, "_request", lambda self, name, *args: Pending() if name == stuck
                        else request(self, name, *args))
    checked = []
    monkeypatch.setattr(transform.reachability, "check", lambda client: checked.append(client))
    monkeypatch.setattr(transform, "STOP_GRACE", 0.0)
    t.shutdown.request()
    with pytest.raises(Stopped):
        t.commit(batch(1))
    assert ("waited", 1000.0) in calls and checked == [t.producer] * len(checked) and checked
    if stuck == "offsets":
        assert "commit" not in names(calls)  # a batch is never committed without its offsets


def test_fenced_errors_are_fatal_and_others_are_not():
    assert transform.is_fatal(ProducerFencedError())
    assert transform.is_fatal(KafkaError("Cannot execute transactional method because we are in an error "
                                         "state: ProducerFencedError: [Error 90] ..."))
    assert not transform.is_fatal(KafkaTimeoutError())
    assert not transform.is_fatal(KafkaError("NotCoordinatorError"))


def test_the_rides_requests_spread_over_partitions_so_these_tests_see_several():
    assert len({r.partition for r in batch(20, seed=random.Random(1).randrange(100))}) > 1


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_only_committed_batches_are_counted_so_a_batch_read_again_after_a_failure_counts_once(guarantee):
    calls: list = []
    t = transform_loop(calls, guarantee, fail_on="commit" if guarantee == "exactly-once" else "flush")
    first = next(rides.rides(11))
    records = [*batch(3), record_of(first, 3), record_of(first, 4), batch(1)[0]._replace(value=b"{", offset=5)]
    with pytest.raises(KafkaError):
        t.commit(records)
    t.recover(records, KafkaConnectionError("failed"), started=time.monotonic())
    assert t.tally.line("confirmed", "rejected", "duplicates", "dead_lettered", "batches") == \
        "confirmed=0 rejected=0 duplicates=0 dead_lettered=0 batches=0"
    t.producer.fail_on = None
    t.commit(records)
    counts = t.tally
    assert (counts["confirmed"] + counts["rejected"], counts["duplicates"], counts["dead_lettered"]) == (4, 1, 1)
    assert (counts["batches"], counts["aborted"]) == (1, 1)
