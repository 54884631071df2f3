"""A 3-node cluster from the launcher (tools.cluster) that loses a node and nothing else: replicated topics
(three replicas, min.insync.replicas 2), acks=all producing and group consuming while the partition's leader is
SIGKILLed, the node's return (the ISR is back to 3), and a stop that leaves no JVM behind.

One cluster for the whole file (starting three JVMs is most of its time); the tests run in file order, each
building on the state the one before left. The foreground CLI's handling of a dead node (its one line, SIGHUP) is
tested in tests/unit/test_broker_cli.py with a stand-in for the cluster: a second real cluster here would cost
another half minute."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

from tests.integration.test_broker import _alive, _wait_gone
from tools.cluster import LocalCluster

pytestmark = pytest.mark.failover  # three nodes of its own: `make failover`, with the failover proof

RUN = uuid.uuid4().hex[:8]
TOPIC = f"replicated.{RUN}"
GROUP = f"cluster-test.{RUN}"
STARTED_WITH: dict[str, dict[int, int]] = {}  # the nodes' client ports at start
# What a 3-node cluster's brokers must say (tools.broker.replication_properties), so that acks=all means two copies.
REPLICATION = {
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
}


@pytest.fixture(scope="module")
def cluster(launcher_available, tmp_path_factory):
    cluster = LocalCluster(data_dir=tmp_path_factory.mktemp("cluster") / "data", nodes=3)
    try:
        started = time.monotonic()
        cluster.start(port=0)
        STARTED_WITH["ports"] = dict(cluster.ports)
        print(f"3-node cluster ready in {time.monotonic() - started:.1f} s: {cluster.bootstrap_servers}")
        yield cluster
    finally:
        cluster.stop()


def _produce(bootstrap: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, retries=1_000_000)
    try:
        futures = [producer.send(TOPIC, key=b"k", value=v) for v in values]
        producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=1)  # raises if the record was not acknowledged by min.insync.replicas replicas
    finally:
        producer.close()


def _produce_in_a_transaction(bootstrap: str, value: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"cluster-test.{RUN}")
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(TOPIC, key=b"k", value=value)
        producer.commit_transaction()
    finally:
        producer.close()


def _consume_group(bootstrap: str, expected: int, timeout: float = 45.0) -> list[bytes]:
    consumer = KafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=GROUP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout * 1000),
    )
    values: list[bytes] = []
    try:
        for record in consumer:
            values.append(record.value)
            if len(values) >= expected:
                break
        consumer.commit()
    finally:
        consumer.close()
    return values


def _wait_isr(cluster: LocalCluster, size: int, timeout: float = 45.0) -> dict:
    deadline = time.monotonic() + timeout
    state: dict = {}
    while True:
        try:
            state = cluster.partition(TOPIC, 0)
        except KeyError:  # just created: not every broker knows it yet
            pass
        else:
            if len(state["isr"]) == size and state["leader"] >= 0:
                return state
        if time.monotonic() > deadline:
            pytest.fail(f"{TOPIC}[0] did not get an ISR of {size} within {timeout:.0f} s: {state}")
        time.sleep(0.5)


def test_three_nodes_serve_and_replicate_by_default(cluster):
    assert set(cluster.brokers()) == {1, 2, 3} and not any(cluster.brokers().values())
    pids = cluster.node_pids
    assert len(set(pids.values())) == 3 and all(pid and _alive(pid) for pid in pids.values())
    assert len(cluster.bootstrap_servers.split(",")) == 3

    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
    try:
        # -1: the broker's default, which is what the pipeline's own topic creation asks for.
        admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=-1)])
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")], config_filter="all")
    finally:
        admin.close()
    broker_config = {name: entry["value"] for name, entry in configs["broker"]["1"].items()}
    assert {name: broker_config[name] for name in REPLICATION} == REPLICATION
    state = _wait_isr(cluster, 3)
    assert state["replicas"] == [1, 2, 3]

    _produce(cluster.bootstrap_servers, [b"before-%d" % i for i in range(10)])
    # A group while all three are up: the committed offsets' topic gets its three replicas now.
    assert _consume_group(cluster.bootstrap_servers, expected=5) != []
    for internal in ("__consumer_offsets", "__transaction_state"):  # created by start(), while all nodes were up
        assert cluster.partition(internal, 0)["replicas"] == [1, 2, 3]


def test_killing_the_leader_loses_one_node_and_nothing_else(cluster):
    leader = cluster.leader_of(TOPIC, 0)
    assert leader in (1, 2, 3)
    others = [i for i in (1, 2, 3) if i != leader]
    pid = cluster.kill_node(leader)
    assert not _alive(pid)
    assert cluster.dead_nodes() == {leader: (pid, -9)}, "the cluster reports the node that went"
    assert cluster.running_nodes() == others, "and keeps the others running"

    # acks=all still succeeds with two in-sync replicas (min.insync.replicas 2); the producer finds the new leader.
    _produce(cluster.bootstrap_servers, [b"after-%d" % i for i in range(10)])
    state = cluster.partition(TOPIC, 0)
    assert state["leader"] in others and leader not in state["isr"] and len(state["isr"]) == 2
    # Transactions too: their state topic was created with three replicas while all nodes were up.
    _produce_in_a_transaction(cluster.bootstrap_servers, b"transaction-after")
    # The group resumes after its committed offset: five "before" left, then what was produced after the kill.
    values = _consume_group(cluster.bootstrap_servers, expected=16)
    assert values == [b"before-%d" % i for i in range(5, 10)] + [b"after-%d" % i for i in range(10)] + [
        b"transaction-after"
    ]


def test_the_node_rejoins_and_the_isr_is_back_to_three(cluster):
    [(dead, _)] = cluster.dead_nodes().items()
    pid = cluster.start_node(dead)
    assert _alive(pid) and cluster.dead_nodes() == {}
    assert cluster.node_pids[dead] == pid
    assert cluster.ports == STARTED_WITH["ports"], "a node comes back at the address clients know"
    assert _wait_isr(cluster, 3)["isr"] == [1, 2, 3]
    _produce(cluster.bootstrap_servers, [b"rejoined"])
    assert _consume_group(cluster.bootstrap_servers, expected=1) == [b"rejoined"]


def test_stop_leaves_no_jvm(cluster):
    pids = [pid for pid in cluster.node_pids.values() if pid]
    assert len(pids) == 3
    started = time.monotonic()
    cluster.stop()
    assert all(_wait_gone(pid, timeout=5) for pid in pids), "no node's JVM may outlive stop()"
    assert time.monotonic() - started < 40
    assert cluster.running_nodes() == [] and cluster.dead_nodes() == {}
    cluster.stop()  # idempotent

