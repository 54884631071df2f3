"""The local launcher (tools.broker) against a real JVM: round trip, restart keeps data, clean stops,
and the failures that need a JVM (port in use, broker dies while starting)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError

from tests.unit.test_broker_cli import one_line_failure
from tools.broker import LocalBroker, metadata_ok, port_is_free

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not running either.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for v in values:
            producer.send(topic, key=b"k", value=v)
        producer.flush(timeout=30)
    finally:
        producer.close()


def _consume(bootstrap: str, topic: str, group: str | None, max_records: int, timeout: float = 30.0):
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout * 1000),
    )
    records = []
    try:
        for record in consumer:
            records.append(record)
            if len(records) >= max_records:
                break
        if group and records:
            last = records[-1]
            consumer.commit({TopicPartition(last.topic, last.partition): OffsetAndMetadata(last.offset + 1)})
    finally:
        consumer.close()
    return records


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()


def _committed(bootstrap: str, group: str, timeout: float = 30.0) -> dict:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return admin.list_group_offsets(group)[group]
            except KafkaError:  # right after a restart the coordinator may still be loading its offsets
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        admin.close()


# ------------------------------------------------------------------------------ the session broker


def test_session_broker_round_trip(kafka_bootstrap, topic_factory):
    topic = topic_factory("roundtrip")
    _produce(kafka_bootstrap, topic, [b"hello"])
    [record] = _consume(kafka_bootstrap, topic, group=None, max_records=1)
    assert (record.key, record.value) == (b"k", b"hello")


def test_restart_broker_fixture_keeps_address_and_records(kafka_bootstrap, topic_factory, restart_broker):
    topic = topic_factory("survives")
    _produce(kafka_bootstrap, topic, [b"before"])
    assert restart_broker() == kafka_bootstrap
    _produce(kafka_bootstrap, topic, [b"after"])
    records = _consume(kafka_bootstrap, topic, group=None, max_records=2)
    assert [r.value for r in records] == [b"before", b"after"]


# ------------------------------------------------------------------------------- the Python API


def test_restart_keeps_records_and_committed_offsets(launcher_available, tmp_path):
    with LocalBroker(data_dir=tmp_path / "data") as broker:
        bootstrap = broker.start(port=0)
        _create_topic(bootstrap, "kept")
        _produce(bootstrap, "kept", [b"first", b"second"])
        [first] = _consume(bootstrap, "kept", group="g", max_records=1)  # commits offset 1
        assert first.value == b"first"
        old_pid = broker.pid

        assert broker.restart() == bootstrap, "a restart must keep the address clients know"
        assert broker.pid != old_pid and not _alive(old_pid)

        assert _committed(bootstrap, "g")[TopicPartition("kept", 0)].offset == 1
        [rest] = _consume(bootstrap, "kept", group="g", max_records=1)
        assert rest.value == b"second", "the group resumes after its committed offset"
        everything = _consume(bootstrap, "kept", group=None, max_records=2)
        assert [r.value for r in everything] == [b"first", b"second"]


def test_stop_leaves_no_jvm_and_frees_the_port(launcher_available, tmp_path):
    broker = LocalBroker(data_dir=tmp_path / "data")
    try:
        broker.start(port=0)
        pid, port = broker.pid, broker.port
        assert _alive(pid)
    finally:
        broker.stop()
    assert not _alive(pid)
    assert port_is_free(port)
    broker.stop()  # idempotent


def test_fresh_start_forgets_topics(launcher_available, tmp_path):
    with LocalBroker(data_dir=tmp_path / "data") as broker:
        bootstrap = broker.start(port=0)
        _create_topic(bootstrap, "forgotten")
        broker.stop()
        bootstrap = broker.start(port=broker.port, fresh=True)
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            assert "forgotten" not in admin.list_topics()
        finally:
            admin.close()


# ------------------------------------------------------------------------------------------ the CLI


def _start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tools.broker", *args],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_bootstrap(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    assert proc.stdout is not None and proc.stderr is not None  # started with both piped
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "bootstrap.servers=" in line:
            return line.split("bootstrap.servers=", 1)[1].split()[0]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"no bootstrap.servers line; stderr: {proc.stderr.read()[-2000:]}")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_bootstrap_and_stops_cleanly_on_signal(launcher_available, tmp_path, how):
    data = tmp_path / "data"
    proc = _start_cli("--port", "0", "--data-dir", str(data))
    try:
        bootstrap = _read_bootstrap(proc)
        assert bootstrap.startswith("127.0.0.1:")
        assert metadata_ok(bootstrap), "the line is printed only once a client can connect"
        java_pid = int((data / "broker.pid").read_text())
        assert _alive(java_pid)
        proc.send_signal(how)
        assert proc.wait(60) == 0
        assert not _alive(java_pid), "the JVM must be gone when the launcher exits"
        assert (tmp_path / "broker.log").stat().st_size > 0, "the broker's own log is written to a file"
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_launcher_does_not_leave_a_jvm_behind(launcher_available, tmp_path):
    data = tmp_path / "data"
    proc = _start_cli("--port", "0", "--data-dir", str(data))
    try:
        _read_bootstrap(proc)
        java_pid = int((data / "broker.pid").read_text())
        proc.kill()  # SIGKILL: no finally, no atexit; only the watchdog can stop the JVM now
        proc.wait()
        assert _wait_gone(java_pid, timeout=45), "the watchdog must stop the JVM of a dead launcher"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_restart_on_same_data_dir_reuses_the_port(launcher_available, tmp_path):
    data = tmp_path / "data"
    ports = []
    for _ in range(2):
        proc = _start_cli("--port", "0", "--data-dir", str(data))
        try:
            ports.append(_read_bootstrap(proc))
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert ports[0] == ports[1]
    assert json.loads((data / "launcher.json").read_text())["port"] == int(ports[0].rsplit(":", 1)[1])


# --------------------------------------------------------------------------- failures needing a JVM


def _run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.broker", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_port_in_use_is_one_line(launcher_available, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run_cli("--port", str(port), "--data-dir", str(tmp_path / "data"))
    one_line_failure(proc, f"port {port} is already in use", "--port 0")


def test_broker_dying_while_starting_quotes_its_log(launcher_available, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.properties").write_text("version=7\n")  # a data dir Kafka cannot read
    proc = _run_cli("--port", "0", "--data-dir", str(data))
    line = one_line_failure(proc, "died while starting", "meta.properties")
    assert "--fresh" in line
    pid = int((data / "broker.pid").read_text())
    assert not _alive(pid)


def test_a_second_launcher_on_a_data_dir_in_use_refuses_and_leaves_the_first_alone(launcher_available, tmp_path):
    data = tmp_path / "data"
    first = _start_cli("--port", "0", "--data-dir", str(data))
    try:
        bootstrap = _read_bootstrap(first)
        recorded = (data / "launcher.json").read_text()
        _create_topic(bootstrap, "before")
        _produce(bootstrap, "before", [b"one"])

        second = _run_cli("--port", "0", "--data-dir", str(data))
        one_line_failure(second, f"data dir {data.resolve()} is in use", "--data-dir")

        assert (data / "launcher.json").read_text() == recorded, "the first launcher's port must not be rewritten"
        _produce(bootstrap, "before", [b"two"])
        assert [r.value for r in _consume(bootstrap, "before", None, max_records=2)] == [b"one", b"two"]
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0
        assert "CorruptRecordException" not in (tmp_path / "broker.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
