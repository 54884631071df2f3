"""`make demo`: get a Kafka broker, run rides through it, stop everything this started.

Where the broker comes from, first match wins:
1. one already answers on localhost:9092 (`docker compose up -d`, `python -m common.broker`): use it, leave it;
2. a Docker engine answers: `docker compose up -d --wait` here, `docker compose down` at the end;
3. otherwise the local launcher (common.broker) on port 9092 (any free port if taken), in a temporary
   data folder that is deleted at the end.

Until the pipeline scripts land this produces a few records and consumes them back; `run_pipeline`
is where rides.py, transaction.py, email.py and analysis.py will run, each a subprocess with its
output prefixed by its name (see `Scripts`).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# `python tools/demo.py` puts tools/ on the path, not the project. Appended, not prepended: the project's
# email.py must not shadow the standard library's `email` package in this process.
sys.path.append(str(PROJECT_ROOT))

from common.broker import BrokerError, LocalBroker, metadata_ok, port_is_free  # noqa: E402

DEFAULT_HOST, DEFAULT_PORT = "localhost", 9092
DEMO_RECORDS = 5


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# ------------------------------------------------------------------------------------------ broker


def _something_listens(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _compose_command() -> list[str] | None:
    """`docker compose` (or the old `docker-compose`) when a Docker engine answers, else None."""
    if shutil.which("docker") is None:
        return None
    try:
        if subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode != 0:
            return None  # a CLI without an engine (or without permission to reach it)
        if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20).returncode == 0:
            return ["docker", "compose"]
    except (OSError, subprocess.TimeoutExpired):
        return None
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    say("a Docker engine answers, but neither `docker compose` nor `docker-compose` is installed")
    return None


def acquire_broker(stack: contextlib.ExitStack) -> str:
    """Bootstrap servers of a ready broker; whatever this starts, `stack` stops."""
    if _something_listens(DEFAULT_HOST, DEFAULT_PORT):
        bootstrap = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
        if not metadata_ok(bootstrap, timeout_ms=10000):
            raise BrokerError(
                f"something listens on {bootstrap} but does not answer as Kafka. "
                "Fix: stop it, or start Kafka there (`docker compose up -d` or `python -m common.broker`)"
            )
        say(f"using the broker already running at {bootstrap} (left running)")
        return bootstrap

    compose = _compose_command()
    if compose:
        say("starting Kafka with docker compose (stopped again at the end)")
        stack.callback(_compose_down, compose)
        subprocess.run([*compose, "up", "-d", "--wait"], cwd=PROJECT_ROOT, check=True)
        bootstrap = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
        _wait_until_ready(bootstrap, timeout=120)
        return bootstrap

    broker = LocalBroker()  # a fresh temporary data dir, deleted by cleanup()
    stack.callback(broker.cleanup)
    port = DEFAULT_PORT if port_is_free(DEFAULT_PORT) else 0
    say(f"no broker on {DEFAULT_HOST}:{DEFAULT_PORT} and no Docker engine: starting the local launcher")
    started = time.monotonic()
    bootstrap = broker.start(port=port)
    say(f"Kafka ready at {bootstrap} in {time.monotonic() - started:.1f} s (log {broker.log_file})")
    return bootstrap


def _compose_down(compose: list[str]) -> None:
    say("stopping docker compose")
    subprocess.run([*compose, "down"], cwd=PROJECT_ROOT, check=False)


def _wait_until_ready(bootstrap: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not metadata_ok(bootstrap):
        if time.monotonic() > deadline:
            raise BrokerError(f"Kafka at {bootstrap} not ready after {timeout:.0f} s. Fix: `docker compose logs`")
        time.sleep(1)


# ----------------------------------------------------------------------------------------- scripts


class Scripts:
    """The pipeline's scripts as subprocesses, each line of their merged output prefixed with its name."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.procs: dict[str, subprocess.Popen] = {}
        self._pumps: list[threading.Thread] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """Start `<name>.py --bootstrap-servers ... *args` from the project root."""
        proc = subprocess.Popen(
            [sys.executable, f"{name}.py", "--bootstrap-servers", self.bootstrap_servers, *args],
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.procs[name] = proc
        pump = threading.Thread(target=self._pump, args=(name, proc), daemon=True)
        pump.start()
        self._pumps.append(pump)
        return proc

    @staticmethod
    def _pump(name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            print(f"[{name:>11}] {line.rstrip()}", flush=True)

    def wait(self, name: str, timeout: float) -> int:
        return self.procs[name].wait(timeout)

    def stop_all(self, timeout: float = 15.0) -> dict[str, int]:
        """SIGTERM every running script (they flush, commit and exit 0), SIGKILL the ones that hang."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop within {timeout:.0f} s; killing it")
                proc.kill()
                codes[name] = proc.wait()
        for pump in self._pumps:
            pump.join(5)
        return codes


def run_pipeline(bootstrap: str, scripts: Scripts) -> bool:
    """The demo itself. For now: a few records through the broker; returns True if all came back.

    Once the scripts exist this becomes: start the consumers (transaction, email, analysis), then
    `rides --count N`, wait for it, give the consumers time to drain, `scripts.stop_all()`.
    """
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"demo.{uuid.uuid4().hex[:8]}"  # its own topic: a reused broker may hold older demos
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()

    sent = [f'{{"ride_id": "demo-{i}", "n": {i}}}'.encode() for i in range(DEMO_RECORDS)]
    producer = KafkaProducer(bootstrap_servers=bootstrap)  # idempotent, acks=all: kafka-python's defaults
    try:
        for i, value in enumerate(sent):
            producer.send(topic, key=f"demo-{i}".encode(), value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()
    say(f"produced {len(sent)} records to {topic}")

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id="demo",
        auto_offset_reset="earliest",  # a new group starts from the beginning, not "latest"
        enable_auto_commit=False,  # commit after the work, not on a timer
        consumer_timeout_ms=30000,
    )
    received = []
    try:
        for record in consumer:
            received.append(record.value)
            if len(received) == len(sent):
                break
        consumer.commit()
    finally:
        consumer.close()
    say(f"consumed {len(received)} of {len(sent)} records back from {topic} (group 'demo', committed)")
    return received == sent


def main() -> int:
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            bootstrap = acquire_broker(stack)
            scripts = Scripts(bootstrap)
            stack.callback(scripts.stop_all)
            ok = run_pipeline(bootstrap, scripts)
    except BrokerError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"demo: error: `{' '.join(e.cmd)}` failed (exit {e.returncode})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say("interrupted; everything it started is stopped")
        return 130
    say(f"{'OK' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s; everything it started is stopped")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
