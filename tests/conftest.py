"""The real Kafka broker every integration test runs against, and per-test topics.

Where the session's broker comes from, first match wins (pytest's header says which one you got):
1. KAFKA_BOOTSTRAP_SERVERS is set: that cluster (never restarted by tests; restart tests are skipped);
2. a Docker engine answers: an apache/kafka container of the launcher's Kafka version (testcontainers);
3. otherwise: the local launcher (tools.broker) on free ports in a temporary folder.
The broker starts on first use, so a run of unit tests alone starts none.

Fixtures:
    kafka_bootstrap -> str              "host:port", session-scoped
    kafka_broker    -> BrokerHandle     .bootstrap_servers, .source, .can_restart, .restart()
    restart_broker  -> () -> str        restarts the session broker (same address, same data), or skips
    topic_factory   -> (name="t", partitions=1, config=None) -> str   a new, uniquely named topic
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tools.broker import KAFKA_VERSION, BrokerError, LocalBroker, check_java, free_port, resolve_libs, wait_until_ready

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"
KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"


# ---------------------------------------------------------------------------------------- markers


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


# ------------------------------------------------------------------------------------ broker source

_source_cache: list[str] = []


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no permission, engine down: all mean "no Docker here"
        return False


def broker_source() -> str:
    """"external", "docker" or "local": decided once per session, without starting anything."""
    if not _source_cache:
        if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            _source_cache.append("external")
        elif _docker_answers():
            _source_cache.append("docker")
        else:
            _source_cache.append("local")
    return _source_cache[0]


def pytest_report_header(config):
    source = broker_source()
    if source == "external":
        where = f"external cluster KAFKA_BOOTSTRAP_SERVERS={os.environ['KAFKA_BOOTSTRAP_SERVERS']}"
    elif source == "docker":
        where = f"testcontainers {KAFKA_IMAGE} (KRaft, a Docker engine answers)"
    else:
        where = f"local launcher tools.broker, Kafka {KAFKA_VERSION} (KRaft; no KAFKA_BOOTSTRAP_SERVERS, no Docker)"
    when = "" if source == "external" else "; started on first use by an integration test"
    return [f"kafka broker: {where}{when}"]


# ------------------------------------------------------------------------------------------ brokers


@dataclass
class BrokerHandle:
    """The session's broker, whatever its source."""

    bootstrap_servers: str
    source: str  # "external", "docker", "local"
    _restart: Callable[[], str] | None = None
    local: LocalBroker | None = None  # the launcher, when source == "local"
    restarts: int = field(default=0)

    @property
    def can_restart(self) -> bool:
        return self._restart is not None

    def restart(self) -> str:
        """Stop and start the broker: same address, same data (topics, records, committed offsets)."""
        if self._restart is None:
            pytest.skip(f"cannot restart the {self.source} broker at {self.bootstrap_servers}")
        self.bootstrap_servers = self._restart()
        self.restarts += 1
        return self.bootstrap_servers


def _wait_ready(bootstrap: str, timeout: float = 120.0) -> None:
    if not wait_until_ready(bootstrap, timeout):
        raise RuntimeError(f"no Kafka answers at {bootstrap} after {timeout:.0f} s")


def _kafka_container():
    """An apache/kafka container (KRaft) reachable from this host.

    testcontainers' KafkaContainer drives Confluent images only (its KRaft mode edits Confluent's start
    scripts), so this configures the Apache image through its documented KAFKA_* environment. The
    advertised listener must be the address the host sees, so the host port is chosen here, before start.
    """
    from testcontainers.core.container import DockerContainer

    host_port = free_port()
    container = DockerContainer(KAFKA_IMAGE)
    host = container.get_docker_client().host()
    container.with_bind_ports(9092, host_port)
    container.with_envs(
        KAFKA_NODE_ID="1",
        KAFKA_PROCESS_ROLES="broker,controller",
        KAFKA_LISTENERS="PLAINTEXT://0.0.0.0:9092,CONTROLLER://localhost:9093",
        KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://{host}:{host_port}",
        KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
        KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
        KAFKA_NUM_PARTITIONS="1",
        KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
        KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
        KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
        KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR="1",
        KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR="1",
        KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
        KAFKA_HEAP_OPTS="-Xms512m -Xmx512m",
    )
    return container, f"{host}:{host_port}"


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    source = broker_source()
    if source == "external":
        bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        try:
            _wait_ready(bootstrap, timeout=30)
        except RuntimeError as e:
            pytest.fail(f"{e} (KAFKA_BOOTSTRAP_SERVERS); unset it to let the tests start a broker", pytrace=False)
        yield BrokerHandle(bootstrap, source)
    elif source == "docker":
        container, bootstrap = _kafka_container()
        container.start()
        try:
            _wait_ready(bootstrap)

            def restart() -> str:
                # A container restart keeps its filesystem (the data) and its fixed host port.
                container.get_wrapped_container().restart(timeout=30)
                _wait_ready(bootstrap)
                return bootstrap

            yield BrokerHandle(bootstrap, source, restart)
        finally:
            container.stop()
    else:
        broker = LocalBroker(data_dir=tmp_path_factory.mktemp("kafka") / "data")
        try:
            try:
                bootstrap = broker.start(port=0)
            except BrokerError as e:
                pytest.fail(f"cannot start the local Kafka broker: {e}", pytrace=False)
            yield BrokerHandle(bootstrap, source, broker.restart, local=broker)
        finally:
            broker.stop()  # also registered with atexit, and a watchdog stops it if this process is killed


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker) -> str:
    return kafka_broker.bootstrap_servers


@pytest.fixture
def restart_broker(kafka_broker) -> Callable[[], str]:
    """A function that restarts the session's broker; skips the test where that is impossible."""
    if not kafka_broker.can_restart:
        pytest.skip(
            f"the broker is an external cluster ({kafka_broker.bootstrap_servers}): "
            "tests never restart it; unset KAFKA_BOOTSTRAP_SERVERS to run this test"
        )
    return kafka_broker.restart


# ------------------------------------------------------------------------------------------- topics


@pytest.fixture
def topic_factory(kafka_bootstrap, request):
    """Creates topics with unique names for this test and deletes them afterwards (best effort)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="tests-topic-factory")
    created: list[str] = []
    test_name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:80]

    def create(name: str = "t", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        topic = f"{name}.{test_name}.{uuid.uuid4().hex[:8]}"
        admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1, topic_configs=config or {})]
        )
        created.append(topic)
        _wait_for_topic(admin, topic, partitions)
        return topic

    yield create
    with contextlib.suppress(Exception):
        if created:
            admin.delete_topics(created)
    admin.close()


def _wait_for_topic(admin, topic: str, partitions: int, timeout: float = 30.0) -> None:
    # create_topics returns once the controller accepted it; wait until the broker serves all partitions
    # with a leader, so a producer's first send does not race the topic's creation.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = admin.describe_topics([topic])
        if described and not described[0].get("error_code"):
            parts = described[0].get("partitions") or []
            if len(parts) == partitions and all(p.get("leader_id", -1) >= 0 for p in parts):
                return
        time.sleep(0.1)
    raise TimeoutError(f"topic {topic} has no leader for all {partitions} partitions after {timeout:.0f} s")


@pytest.fixture(scope="session")
def launcher_available():
    """What a test that starts brokers of its own needs (Java 17+, the jars), even when the session broker is
    Docker or external; skipped only where the launcher cannot run."""
    try:
        check_java()
        resolve_libs()
    except BrokerError as e:
        pytest.skip(f"local launcher unavailable: {e}")


@pytest.fixture
def own_broker(launcher_available, tmp_path):
    """A broker of this test's own (the session's is shared), not started: the test starts and stops it as
    it needs (an outage, a broker that appears late). Stopped at the end in any case."""
    broker = LocalBroker(data_dir=tmp_path / "kafka")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def local_cluster(launcher_available, tmp_path):
    """A real 3-node KRaft cluster of this test's own (tools.cluster.LocalCluster: replication 3,
    min.insync.replicas 2), started on free ports; the test kills, stops and starts its nodes as it needs.
    Skipped only where the launcher cannot run (no Java 17+, no Kafka jars); stopped at the end in any case."""
    from tools.cluster import LocalCluster

    cluster = LocalCluster(tmp_path / "cluster", nodes=3)
    try:
        try:
            cluster.start(port=0)
        except BrokerError as e:
            pytest.fail(f"cannot start the local 3-node cluster: {e}", pytrace=False)
        yield cluster
    finally:
        cluster.stop()  # also registered with atexit, and each node's watchdog stops it if this process is killed
