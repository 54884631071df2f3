"""The launcher's one-line failures that need no running broker, and its small pure helpers."""

from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tools import broker
from tools.cluster import NODE_HEAP

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, path: str, extra_env: dict | None = None, timeout: float = 120):
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "KAFKA_HOME", "MAVEN_OPTS")}
    env["PATH"] = path
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "tools.broker", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_failure(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert a launcher failure: non-zero, no traceback, one `error:` line with a Fix naming each needle."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("tools.broker: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Fix:" in errors[0]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _bin_with(tmp_path: Path, **tools: str) -> Path:
    """A PATH folder holding only the given tools (name -> real path or a shell script body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, target in tools.items():
        if target.startswith("#!"):
            (bin_dir / name).write_text(target)
            (bin_dir / name).chmod(0o755)
        else:
            (bin_dir / name).symlink_to(target)
    return bin_dir


def test_help_works_without_java_or_kafka(tmp_path):
    proc = _run("--help", path=str(_bin_with(tmp_path)))
    assert proc.returncode == 0
    assert "--port" in proc.stdout and "--data-dir" in proc.stdout and "--fresh" in proc.stdout


def test_no_java(tmp_path):
    proc = _run("--port", "0", "--data-dir", str(tmp_path / "d"), path=str(_bin_with(tmp_path)))
    one_line_failure(proc, "no Java found", "JDK 17")


def test_java_older_than_17(tmp_path):
    old_java = '#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n'
    proc = _run("--port", "0", "--data-dir", str(tmp_path / "d"), path=str(_bin_with(tmp_path, java=old_java)))
    one_line_failure(proc, "Java 11 found", "needs Java 17+")


def test_java_8_version_string(tmp_path):
    old_java = '#!/bin/sh\necho \'java version "1.8.0_392"\' >&2\n'
    assert broker.java_major_version(str(_bin_with(tmp_path, java=old_java) / "java")) == 8


@pytest.fixture
def real_java():
    java = shutil.which("java")
    if java is None or broker.java_major_version(java) < broker.MIN_JAVA:
        pytest.skip("needs Java 17+ on PATH")
    return java


def test_neither_maven_nor_kafka_home(tmp_path, real_java):
    proc = _run(
        "--port", "0", "--data-dir", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "empty-cache"),
        path=str(_bin_with(tmp_path, java=real_java)),
    )  # fmt: skip
    one_line_failure(proc, "neither Maven nor KAFKA_HOME", "KAFKA_HOME")


def test_kafka_home_without_jars(tmp_path, real_java):
    proc = _run(
        "--port", "0", "--data-dir", str(tmp_path / "d"),
        path=str(_bin_with(tmp_path, java=real_java)),
        extra_env={"KAFKA_HOME": str(tmp_path / "not-kafka")},
    )  # fmt: skip
    one_line_failure(proc, "has no libs/kafka_2.13-", "KAFKA_HOME")


def test_jars_cannot_be_resolved_offline(tmp_path, real_java):
    mvn = shutil.which("mvn")
    if mvn is None:
        pytest.skip("needs Maven")
    # A real Maven, offline, with an empty local repository: exactly a first run without network.
    home = tmp_path / "home"
    (home / ".m2").mkdir(parents=True)
    (home / ".m2" / "settings.xml").write_text("<settings><offline>true</offline></settings>\n")
    proc = _run(
        "--resolve-only", "--cache-dir", str(tmp_path / "cache"),
        path=str(_bin_with(tmp_path, java=real_java, mvn=mvn)),
        extra_env={"MAVEN_OPTS": f"-Duser.home={home}", "HOME": str(home)},
    )  # fmt: skip
    one_line_failure(proc, "Maven could not resolve the Kafka", "offline", "KAFKA_HOME")
    assert not (tmp_path / "cache" / ".resolved").exists(), "a failed resolution must not be marked done"


def test_cluster_id_is_22_chars_of_base64url_uuid_never_starting_with_a_dash():
    for _ in range(2000):  # ~1 in 64 random ids starts with "-"; the storage tool reads those as options
        cid = broker._new_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_log_quote_keeps_messages_and_drops_stack_frames():
    log = "old run\n===== tools.broker: starting X\nINFO a\nERROR boom\njava.lang.X: why\n\tat a.b(C.java:1)\n"
    text = broker._tail(log.rpartition(broker._BANNER)[2])
    assert "why" in text and "at a.b" not in text and "old run" not in text


def test_a_data_dir_in_use_is_refused_before_anything_in_it_is_touched(tmp_path):
    # What a running launcher holds: a flock on the data dir itself. A second launcher on that dir must
    # not rewrite its launcher.json (the port), its configs or its data, nor even look for Java first.
    data = tmp_path / "data"
    data.mkdir()
    (data / "launcher.json").write_text('{"port": 19092, "controller_port": 19093, "cluster_id": "x"}\n')
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    held = os.open(data, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = _run("--port", "0", "--data-dir", str(data), path=str(_bin_with(tmp_path)))
        one_line_failure(proc, f"data dir {data} is in use", "--data-dir")
        proc = _run("--port", "0", "--data-dir", str(data), "--fresh", path=str(_bin_with(tmp_path)))
        one_line_failure(proc, f"data dir {data} is in use")
    finally:
        os.close(held)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before


# ------------------------------------------------------------------------------------ --nodes N (tools.cluster)


def test_help_explains_the_cluster_and_how_a_dead_node_comes_back(tmp_path):
    proc = _run("--help", path=str(_bin_with(tmp_path)))
    assert proc.returncode == 0
    assert "--nodes N" in proc.stdout and "kill -HUP" in proc.stdout and "19092" in proc.stdout


@pytest.mark.parametrize("args", [["--nodes", "0"], ["--nodes", "6"], ["--nodes", "three"],
                                  ["--nodes", "3", "--log-file", "x.log"]])  # fmt: skip
def test_bad_cluster_arguments_are_refused_by_the_parser(tmp_path, args):
    proc = _run(*args, path=str(_bin_with(tmp_path)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error:" in proc.stderr.splitlines()[-1]


def test_cluster_defaults_sit_beside_the_single_broker():
    args = broker._parse_args(["--nodes", "3"])
    assert (args.port, args.data_dir) == (broker.DEFAULT_CLUSTER_PORT, broker.DEFAULT_CLUSTER_DIR)
    args = broker._parse_args([])
    assert (args.nodes, args.port, args.data_dir) == (1, broker.DEFAULT_PORT, broker.DEFAULT_DATA_DIR)
    assert broker._parse_args(["--nodes", "3", "--port", "0"]).port == 0


@pytest.mark.parametrize(
    "brokers, replicas, min_isr", [(1, "1", "1"), (2, "2", "1"), (3, "3", "2"), (5, "3", "2")]
)  # fmt: skip
def test_replication_is_min_3_brokers_and_two_in_sync_from_three(brokers, replicas, min_isr):
    props = broker.replication_properties(brokers)
    for name in ("default.replication.factor", "offsets.topic.replication.factor",
                 "transaction.state.log.replication.factor", "share.coordinator.state.topic.replication.factor"):
        assert props[name] == replicas, name
    for name in ("min.insync.replicas", "transaction.state.log.min.isr", "share.coordinator.state.topic.min.isr"):
        assert props[name] == min_isr, name


def _properties(node: broker.LocalBroker, port: int, controller_port: int) -> dict[str, str]:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    node.port, node.controller_port = port, controller_port
    text = node._write_configs().read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def test_a_single_broker_keeps_its_dynamic_quorum_of_one(tmp_path):
    props = _properties(broker.LocalBroker(data_dir=tmp_path / "data"), 9092, 9093)
    assert props["node.id"] == "1" and props["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093"
    assert "controller.quorum.voters" not in props
    assert props["offsets.topic.replication.factor"] == "1" and props["min.insync.replicas"] == "1"


def test_a_cluster_node_is_one_voter_of_a_static_quorum_with_three_replicas(tmp_path):
    voters = {1: 40001, 2: 40002, 3: 40003}
    node = broker.LocalBroker(data_dir=tmp_path / "node-2", node_id=2, voters=voters, cluster_id="x")
    props = _properties(node, 19093, 40002)
    assert props["process.roles"] == "broker,controller" and props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:40001,2@127.0.0.1:40002,3@127.0.0.1:40003"
    assert "controller.quorum.bootstrap.servers" not in props
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19093,CONTROLLER://127.0.0.1:40002"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19093"
    assert {k: props[k] for k in broker.replication_properties(3)} == broker.replication_properties(3)
    assert props["offsets.topic.replication.factor"] == "3" and props["transaction.state.log.min.isr"] == "2"
    with pytest.raises(ValueError):
        broker.LocalBroker(data_dir=tmp_path / "n4", node_id=4, voters=voters)


def test_cluster_ports_follow_the_first_and_are_all_distinct(tmp_path):
    from tools.cluster import LocalCluster

    base = broker.free_port()
    while not all(broker.port_is_free(p) for p in range(base, base + 3)):
        base = broker.free_port()
    cluster = LocalCluster(tmp_path / "c", nodes=3)
    ports, controllers = cluster._pick_ports(base, {})
    assert ports == [base, base + 1, base + 2]
    assert len(set(ports + controllers)) == 6
    # port 0: the last run's ports and controllers again, if they are free
    assert cluster._pick_ports(0, {"ports": ports, "controller_ports": controllers}) == (ports, controllers)
    any_ports, any_controllers = cluster._pick_ports(0, {})
    assert len(set(any_ports + any_controllers)) == 6


def test_a_taken_cluster_port_is_one_line_naming_the_node(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run("--nodes", "3", "--port", str(port - 1), "--data-dir", str(tmp_path / "c"),
                    path=os.environ["PATH"])  # fmt: skip
    if "is already in use" not in proc.stderr:  # port - 1 itself taken by someone else: nothing to check
        pytest.skip(f"port {port - 1} not free here")
    one_line_failure(proc, f"port {port} (node 2 of 3", "--port 0")


def test_a_cluster_refuses_a_data_dir_that_is_not_its_own_before_looking_for_java(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    (single / "launcher.json").write_text('{"port": 9092}\n')
    proc = _run("--nodes", "3", "--port", "0", "--data-dir", str(single), path=str(_bin_with(tmp_path)))
    one_line_failure(proc, "holds a single broker's data", "--data-dir")

    five = tmp_path / "five"
    five.mkdir()
    (five / "cluster.json").write_text('{"nodes": 5, "cluster_id": "x"}\n')
    proc = _run("--nodes", "3", "--port", "0", "--data-dir", str(five), path=str(_bin_with(tmp_path)))
    one_line_failure(proc, "holds a cluster of 5 nodes, not 3", "--nodes 5", "--fresh")

    # and one broker refuses a cluster's folder
    proc = _run("--port", "0", "--data-dir", str(five), path=str(_bin_with(tmp_path)))
    one_line_failure(proc, "holds a cluster's data", "--nodes")


def test_a_cluster_data_dir_in_use_is_refused(tmp_path):
    data = tmp_path / "c"
    data.mkdir()
    held = os.open(data, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = _run("--nodes", "3", "--port", "0", "--data-dir", str(data), path=str(_bin_with(tmp_path)))
        one_line_failure(proc, f"data dir {data} is in use", "--data-dir")
    finally:
        os.close(held)


def test_exit_status_reads_like_a_shell():
    from tools.cluster import _exit_status

    assert _exit_status(-9) == "code 137 (SIGKILL)"
    assert _exit_status(-15) == "code 143 (SIGTERM)"
    assert _exit_status(1) == "code 1"


# The foreground loop, with a stand-in for the cluster: which lines a dead node gives, what SIGHUP does.


class _FakeNode:
    def __init__(self, node_id: int, pid: int) -> None:
        self.node_id, self.pid = node_id, pid
        self.bootstrap_servers = f"127.0.0.1:{19091 + node_id}"
        self.controller_port = 40000 + node_id
        self.log_file = Path(f"/tmp/node-{node_id}.log")

    def log_tail(self, lines: int = 5) -> str:
        return "ERROR disk full | java.io.IOException: No space left on device"


class _FakeCluster:
    """Node 2 dies at the 2nd poll (SIGKILLed), node 3 at the 4th (exits 1 by itself); the 6th poll sends this
    process SIGHUP, the 9th SIGTERM. start_node() brings node 2 back and fails for node 3."""

    instances: list[_FakeCluster] = []

    def __init__(self, data_dir, nodes, cache_dir) -> None:
        self.data_dir, self.size = Path(data_dir), nodes
        self.nodes = {i: _FakeNode(i, 1000 + i) for i in range(1, nodes + 1)}
        self.dead: dict[int, tuple[int, int]] = {}
        self.polls = 0
        self.started_again: list[int] = []
        self.stopped = False
        _FakeCluster.instances.append(self)

    def start(self, port, fresh):
        return ",".join(n.bootstrap_servers for n in self.nodes.values())

    def dead_nodes(self):
        self.polls += 1
        if self.polls == 2:
            self.dead[2] = (1002, -9)
        if self.polls == 4:
            self.dead[3] = (1003, 1)
        if self.polls == 6:
            os.kill(os.getpid(), signal.SIGHUP)
        if self.polls == 9:
            os.kill(os.getpid(), signal.SIGTERM)
        return dict(self.dead)

    def running_nodes(self):
        return [i for i in self.nodes if i not in self.dead]

    def node(self, i):
        return self.nodes[i]

    def log_file(self, i):
        return self.nodes[i].log_file

    def start_node(self, i):
        self.started_again.append(i)
        if i == 3:
            raise broker.BrokerError("the node 3 died while starting (exit 1); last lines of ...: disk full")
        del self.dead[i]
        self.nodes[i].pid = 2000 + i
        return self.nodes[i].pid

    def stop(self):
        self.stopped = True


def test_the_foreground_cluster_reports_a_dead_node_once_keeps_the_others_and_restarts_it_on_sighup(
    monkeypatch, capsys, tmp_path
):
    from tools import cluster as cluster_module

    monkeypatch.setattr(cluster_module, "LocalCluster", _FakeCluster)
    monkeypatch.setattr(cluster_module.time, "sleep", lambda s: None)
    _FakeCluster.instances.clear()
    assert broker.main(["--nodes", "3", "--port", "0", "--data-dir", str(tmp_path)]) == 0
    [fake] = _FakeCluster.instances
    assert fake.stopped and fake.started_again == [2, 3]
    lines = capsys.readouterr().out.splitlines()
    me = os.getpid()
    assert lines[0].startswith("Kafka 4.3.1 cluster of 3 nodes ready in ")
    assert "bootstrap.servers=127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094 " in lines[0]
    assert f"`kill -HUP {me}`" in lines[0]
    assert [ln.split(",")[0] for ln in lines[1:4]] == ["  node 1: pid 1001", "  node 2: pid 1002", "  node 3: pid 1003"]
    rest = lines[4:]
    assert rest[0] == (
        f"node 2 (pid 1002) exited with code 137 (SIGKILL); the other 2 nodes keep running; `kill -HUP {me}` "
        "starts it again (log /tmp/node-2.log)"
    )
    assert rest[1].startswith(f"node 3 (pid 1003) exited with code 1; the other node keeps running; `kill -HUP {me}`")
    assert "last lines of /tmp/node-3.log: ERROR disk full" in rest[1], "an exit of its own quotes the node's log"
    assert rest[2] == "starting node 2 again on 127.0.0.1:19093"
    assert rest[3].startswith("node 2 is back (pid 2002) after ") and rest[3].endswith("; 2 of 3 nodes running")
    assert rest[4] == "starting node 3 again on 127.0.0.1:19094"
    assert rest[5].startswith("node 3 did not start again: the node 3 died while starting")
    assert rest[5].endswith("; the other 2 nodes keep running")
    assert len(rest) == 6, "each death is reported once, and a failed restart is not reported again as a death"
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


# The compose profile `cluster`: the same three nodes for Docker users (read as tests/unit/test_compose.py reads
# the other services; no Docker engine needed).

CLUSTER_SERVICES = ["kafka-1", "kafka-2", "kafka-3"]


def _compose():
    from tests.unit import test_compose

    return test_compose


def _listeners(value: str) -> dict[str, str]:
    """"A://h:1,B://h:2" -> {"A": "h:1", "B": "h:2"}"""
    return dict(item.split("://", 1) for item in value.split(","))


def test_the_cluster_profile_has_three_kafka_nodes_of_the_launchers_version_only_with_its_profile():
    compose = _compose()
    for name in CLUSTER_SERVICES:
        assert name in compose.SERVICES, f"docker-compose.yml has no service {name}"
        assert compose._setting("image", name) == f"apache/kafka:{broker.KAFKA_VERSION}"
        assert re.findall(r"^    profiles: (.+)$", compose.SERVICES[name], re.MULTILINE) == ['["cluster"]']
        assert compose._setting("KAFKA_PROCESS_ROLES", name) == "broker,controller"
        assert compose._setting("KAFKA_HEAP_OPTS", name) == f"-Xms{NODE_HEAP} -Xmx{NODE_HEAP}"


def test_the_cluster_nodes_are_one_quorum_with_one_cluster_id():
    compose = _compose()
    ids = {compose._setting("CLUSTER_ID", name) for name in CLUSTER_SERVICES}
    assert len(ids) == 1 and ids != {compose._setting("CLUSTER_ID")}, "one id, not the single broker's"
    voters = {compose._setting("KAFKA_CONTROLLER_QUORUM_VOTERS", name) for name in CLUSTER_SERVICES}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    for i, name in enumerate(CLUSTER_SERVICES, 1):
        assert compose._setting("KAFKA_NODE_ID", name) == str(i)
        listeners = _listeners(compose._setting("KAFKA_LISTENERS", name))
        assert listeners["CONTROLLER"] == "0.0.0.0:9093", "the voters' port, reachable from the other nodes"


def test_each_cluster_node_is_published_on_the_loopback_at_the_launchers_ports_and_advertised_there():
    compose = _compose()
    for i, name in enumerate(CLUSTER_SERVICES):
        host_port = broker.DEFAULT_CLUSTER_PORT + i  # 19092, 19093, 19094: what `--nodes 3` uses by default
        listeners = _listeners(compose._setting("KAFKA_LISTENERS", name))
        advertised = _listeners(compose._setting("KAFKA_ADVERTISED_LISTENERS", name))
        container_port = listeners["EXTERNAL"].rsplit(":", 1)[1]
        assert compose._list("ports", name) == [f"127.0.0.1:{host_port}:{container_port}"]
        assert advertised["EXTERNAL"] == f"localhost:{host_port}", "clients on the host are sent back to it"
        # The other nodes reach this one on the compose network, by its service name.
        assert advertised["INTERNAL"] == f"{name}:{listeners['INTERNAL'].rsplit(':', 1)[1]}"
        assert compose._setting("KAFKA_INTER_BROKER_LISTENER_NAME", name) == "INTERNAL"
        protocol_map = compose._setting("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", name)
        protocols = dict(p.split(":") for p in protocol_map.split(","))
        assert set(protocols) == set(listeners) and set(protocols.values()) == {"PLAINTEXT"}
        [healthcheck] = re.findall(r"^\s+test: (.+)$", compose.SERVICES[name], re.MULTILINE)
        assert f"--bootstrap-server {advertised['INTERNAL']} " in healthcheck


def test_the_cluster_nodes_replicate_like_the_launchers():
    compose = _compose()
    expected = {"KAFKA_" + k.upper().replace(".", "_"): v for k, v in broker.replication_properties(3).items()}
    for name in CLUSTER_SERVICES:
        assert {k: compose._setting(k, name) for k in expected} == expected, name


def test_each_cluster_node_keeps_its_data_in_a_volume_of_its_own():
    compose = _compose()
    for name in CLUSTER_SERVICES:
        assert compose._list("volumes", name) == [f"{name}-data:/var/lib/kafka/data"]
        assert compose._setting("KAFKA_LOG_DIRS", name) == "/var/lib/kafka/data"
        assert re.search(rf"^volumes:\n(?:\s+[\w-]+:\n)*\s+{name}-data:", compose.COMPOSE, re.MULTILINE)
