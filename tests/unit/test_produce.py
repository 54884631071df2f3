"""common.produce's counting, without a broker: a send counts as acknowledged only once its future succeeded,
a failed send is logged with its ride and not counted, and what is still on its way at the end is neither."""

import logging

from kafka.errors import KafkaTimeoutError, NotLeaderForPartitionError
from kafka.producer.future import FutureProduceResult, FutureRecordMetadata
from kafka.structs import TopicPartition

from common.produce import Deliveries


class Send:
    """A send as KafkaProducer.send returns it: its record's future, done once its batch's request is."""

    def __init__(self) -> None:
        self.batch = FutureProduceResult(TopicPartition("ride_details", 0))
        self.future = FutureRecordMetadata(self.batch, 0, 0, None, 36, 300, -1)

    def success(self, _=None) -> None:
        self.batch.success((42, -1, None))  # (base offset, log append time, no per-record error)

    def failure(self, error: Exception) -> None:
        self.batch.failure(error)


def sends(deliveries: Deliveries, n: int) -> list[Send]:
    out = [Send() for _ in range(n)]
    for i, s in enumerate(out):
        deliveries.sent(f"ride-{i}".encode(), s.future)
    return out


def test_only_what_the_broker_acknowledged_counts():
    d = Deliveries()
    futures = sends(d, 5)
    assert (d.acknowledged, d.in_flight) == (0, 5)
    for f in futures[:3]:
        f.success(None)
    assert (d.acknowledged, d.failed, d.in_flight) == (3, 0, 2)
    assert d.final() == 2  # still on their way: unacknowledged
    assert (d.requested, d.acknowledged, d.failed) == (5, 3, 0)


def test_acknowledgements_out_of_order_are_all_counted_at_the_end():
    d = Deliveries()
    futures = sends(d, 4)
    for f in futures[1:]:  # another partition's batch may be acknowledged before the first send's
        f.success(None)
    assert d.acknowledged + d.in_flight == 4  # never more than sent, never counted twice
    futures[0].success(None)
    assert (d.acknowledged, d.in_flight) == (4, 0)
    assert d.final() == 0 and d.acknowledged == 4


def test_a_failed_send_is_logged_with_its_ride_and_not_counted(caplog):
    d = Deliveries()
    futures = sends(d, 3)
    futures[0].success(None)
    futures[1].failure(NotLeaderForPartitionError("gone"))
    futures[2].success(None)
    with caplog.at_level(logging.ERROR):
        assert d.in_flight == 0
    assert (d.acknowledged, d.failed) == (2, 1)
    assert "ride ride-1 was not acknowledged (NotLeaderForPartitionError" in caplog.text
    assert d.final() == 0


def test_sends_abandoned_after_final_stay_unacknowledged_not_failed():
    d = Deliveries()
    futures = sends(d, 3)
    futures[0].success(None)
    assert d.final() == 2
    for f in futures[1:]:  # close() abandons what Kafka did not confirm: those sends fail
        f.failure(KafkaTimeoutError("abandoned"))
    assert (d.requested, d.acknowledged, d.failed, d.in_flight) == (3, 1, 0, 2)


def test_wait_returns_once_the_oldest_send_is_done_or_the_timeout():
    d = Deliveries()
    futures = sends(d, 2)
    futures[0].success(None)
    d.wait(5)  # returns at once: something to count
    assert d.acknowledged == 1
    d.wait(0.01)  # nothing done: the timeout
    assert d.in_flight == 1
