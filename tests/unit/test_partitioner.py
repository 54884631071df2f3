"""The producers' partitioner puts every keyed record where kafka-python's default partitioner (the Java
client's murmur2) does: transaction.py refuses a ride found outside its key's partition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner import DefaultPartitioner

from common.clients import KeyPartitioner


class Cluster:
    """What a partitioner reads of the producer's cluster metadata: one topic and its partitions."""

    def __init__(self, partitions: int, available: int | None = None) -> None:
        self._all = set(range(partitions))
        self._available = set(range(available if available is not None else partitions))

    def topics(self):
        return {"t"}

    def partitions_for_topic(self, topic):
        return self._all if topic == "t" else None

    def available_partitions_for_topic(self, topic):
        return self._available


@given(key=st.binary(max_size=100), partitions=st.integers(1, 64), available=st.integers(0, 64))
def test_a_keyed_record_goes_where_the_default_partitioner_puts_it(key, partitions, available):
    cluster = Cluster(partitions, min(available, partitions))  # a partition without a leader changes nothing
    expected = DefaultPartitioner().partition("t", None, key, None, b"v", cluster)
    assert KeyPartitioner().partition("t", None, key, None, b"v", cluster) == expected


def test_a_ride_key_lands_in_the_same_partition():
    key = b"6f1c2a9e-3b8d-4c1e-9f2a-7d5e8b1c0a3f"
    for partitions in (1, 3, 6, 12):
        cluster = Cluster(partitions)
        assert KeyPartitioner().partition("t", None, key, None, b"v", cluster) == \
            DefaultPartitioner().partition("t", None, key, None, b"v", cluster)


def test_an_unkeyed_record_goes_to_an_available_partition():
    cluster = Cluster(6, available=2)
    assert {KeyPartitioner().partition("t", None, None, None, b"v", cluster) for _ in range(50)} <= {0, 1}
