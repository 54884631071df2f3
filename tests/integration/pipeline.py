"""Helpers for integration tests that drive the pipeline's scripts as real subprocesses.

Import it as `from tests.integration.pipeline import Script, read_all, ...`.
Typical use (the broker comes from the `kafka_bootstrap` fixture in tests/conftest.py):

    prefix = unique_prefix()
    with Script("rides.py", "--count", "200", "--seed", "1", bootstrap=kafka_bootstrap, prefix=prefix) as rides:
        rides.wait(timeout=120)                 # rides.py exits by itself after --count rides
    summary = parse_summary(rides.log())      # {"requested": 200, "acknowledged": 200, ...}
    with Script("transaction.py", bootstrap=kafka_bootstrap, prefix=prefix, group_id=f"{prefix}tx") as tx:
        confirmed = read_until(kafka_bootstrap, prefix + "ride_confirmed", lambda rs: len(rs) >= 190)
        tx.stop()                               # SIGTERM; asserts exit code 0 within 10 s

Every Script is killed (SIGKILL, by its pid) when its `with` block ends, whatever happened in it, so a
failing test never leaves a process behind. Each script's stdout and stderr go to files (never pipes: a
full pipe would block the script), readable at any time with .log().
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from common import cli

ROOT = Path(__file__).resolve().parents[2]

# A contract (docs/architecture.md): a script exits within 10 s of SIGTERM.
STOP_TIMEOUT = 10.0


def unique_prefix(label: str = "t") -> str:
    """A fresh --topic-prefix (and group-id prefix), so that each test has topics and groups of its own."""
    return f"{label}-{uuid.uuid4().hex[:10]}."


class Script:
    """One of the pipeline's scripts (or `-m module`) running as a subprocess, cwd = the project root.

    Script("rides.py", "--count", "10", bootstrap=..., prefix=..., group_id=...) runs
    `python rides.py --count 10 --bootstrap-servers ... --topic-prefix ... --group-id ...`
    (bootstrap/prefix/group_id are only added when given). Use it as a context manager, or call
    .kill() in a finally block.
    """

    def __init__(
        self,
        script: str,
        *args: str,
        bootstrap: str | None = None,
        prefix: str | None = None,
        group_id: str | None = None,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.name = script
        argv = [sys.executable, *(["-m", script] if not script.endswith(".py") else [str(ROOT / script)]), *args]
        if bootstrap is not None:
            argv += ["--bootstrap-servers", bootstrap]
        if prefix is not None:
            argv += ["--topic-prefix", prefix]
        if group_id is not None:
            argv += ["--group-id", group_id]
        self.argv = argv
        log_dir = Path(log_dir or tempfile.mkdtemp(prefix="pipeline-"))
        stem = f"{Path(script).stem}-{uuid.uuid4().hex[:6]}"
        self.stdout_path = log_dir / f"{stem}.out"
        self.stderr_path = log_dir / f"{stem}.err"
        # Only what the test says: none of the developer's RIDES_* or SMTP_* variables, and no .env (the
        # scripts read it from their current folder, here the test's own; `-m` finds the project by PYTHONPATH).
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("RIDES_", "SMTP_"))}
        full_env.update({"PYTHONPATH": str(ROOT)}, **(env or {}))
        # O_APPEND files: the child writes, the test reads them through its own file descriptors.
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.process = subprocess.Popen(argv, cwd=log_dir, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                            env=full_env)
        self.pid = self.process.pid

    # ------------------------------------------------------------------------------------- context

    def __enter__(self) -> Script:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # ------------------------------------------------------------------------------------- output

    def log(self) -> str:
        """Everything the script wrote to stderr so far (its log)."""
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """Wait until a line of the log matches the regular expression; fail if the script exits first."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log(), re.MULTILINE)
            if m:
                return m
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.process.returncode}) before logging "
                                     f"/{pattern}/; its log:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log /{pattern}/ within {timeout:.0f} s; "
                                     f"its log:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    # ------------------------------------------------------------------------------------- ending

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float = 120.0, expect: int | None = 0) -> int:
        """Wait for the script to exit by itself; assert its exit code (unless expect is None)."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} still running after {timeout:.0f} s; its log:\n"
                                 f"{self.log()[-4000:]}") from None
        if expect is not None:
            assert code == expect, f"{self.name} exited {code}, expected {expect}; its log:\n{self.log()[-4000:]}"
        return code

    def stop(self, timeout: float = STOP_TIMEOUT, expect: int | None = 0, sig: int = signal.SIGTERM) -> int:
        """Send SIGTERM (or sig) and assert that the script exits with `expect` within `timeout` seconds.

        Returns the exit code. If it does not exit in time, it is killed and the assertion fails.
        """
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout:.0f} s of "
                                 f"{signal.Signals(sig).name}; its log:\n{self.log()[-4000:]}") from None
        if expect is not None:
            assert code == expect, f"{self.name} exited {code} after {signal.Signals(sig).name}, expected " \
                                   f"{expect}; its log:\n{self.log()[-4000:]}"
        return code

    def kill(self) -> None:
        """SIGKILL (a crash: no flush, no commit) and reap; a no-op if it has already exited."""
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
            pass


@contextlib.contextmanager
def consumers(bootstrap: str, prefix: str, folder: Path, *args: str) -> Iterator[tuple[Script, Script, Script]]:
    """transaction.py, email.py (its outbox in `folder`) and analysis.py (its state there), each in a group of
    its own (<prefix>tx, <prefix>email, <prefix>analysis), all given *args; every one killed at the end."""
    with Script("transaction.py", *args, bootstrap=bootstrap, prefix=prefix, group_id=f"{prefix}tx") as tx, \
            Script("email.py", *args, "--outbox", str(folder / "outbox"), bootstrap=bootstrap, prefix=prefix,
                   group_id=f"{prefix}email") as em, \
            Script("analysis.py", *args, "--state", str(folder / "analysis.db"), bootstrap=bootstrap,
                   prefix=prefix, group_id=f"{prefix}analysis") as an:
        yield tx, em, an


# ----------------------------------------------------------------------------------------- summaries

def parse_summary(log: str) -> dict[str, int | float | str]:
    """common.cli.parse_summary of a script's log; fails the test, showing the log, if it has no summary line."""
    try:
        return cli.parse_summary(log)
    except ValueError:
        raise AssertionError(f"no 'summary:' line in the log:\n{log[-4000:]}") from None


# ------------------------------------------------------------------------------------------ topics


def read_all(
    bootstrap: str,
    topic: str,
    *,
    quiet: float = 3.0,
    timeout: float = 60.0,
    isolation_level: str = "read_committed",
) -> list[ConsumerRecord]:
    """Every record of a topic from the beginning, read until nothing new arrives for `quiet` seconds.

    No consumer group (nothing committed, nobody else affected). read_committed by default, as the
    pipeline's downstream consumers read; pass isolation_level="read_uncommitted" to see aborted records.
    """
    return read_until(bootstrap, topic, None, quiet=quiet, timeout=timeout, isolation_level=isolation_level)


def read_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[ConsumerRecord]], bool] | None,
    *,
    quiet: float = 3.0,
    timeout: float = 120.0,
    isolation_level: str = "read_committed",
) -> list[ConsumerRecord]:
    """Read a topic from the beginning until done(records) holds, then keep reading until it has been
    quiet for `quiet` seconds (so that duplicates arriving late are seen too). With done=None: until quiet.

    Fails with an AssertionError if done(records) does not hold within `timeout` seconds.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             isolation_level=isolation_level, client_id="tests-reader")
    try:
        deadline = time.monotonic() + timeout
        partitions = None
        while not partitions:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                assert time.monotonic() < deadline, f"topic {topic} does not exist after {timeout:.0f} s"
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord] = []
        last_new = time.monotonic()
        satisfied = done is None
        while True:
            batch = consumer.poll(timeout_ms=200)
            now = time.monotonic()
            for part in batch.values():
                records.extend(part)
                last_new = now
            if not satisfied and done is not None and done(records):
                satisfied, last_new = True, now
            if satisfied and now - last_new >= quiet:
                return records
            if not satisfied and now > deadline:
                raise AssertionError(f"{topic}: condition not met within {timeout:.0f} s "
                                     f"({len(records)} records read)")
            if satisfied and now > deadline + quiet + 60:  # a topic that never goes quiet
                return records
    finally:
        consumer.close()


def produce_raw(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]],
                headers: list[tuple[str, bytes]] | None = None) -> int:
    """Produce (key, value) byte pairs as they are (hostile input included); returns how many were acked."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="tests-raw-producer")
    try:
        futures = [producer.send(topic, key=k, value=v, headers=headers or []) for k, v in records]
        producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=30)  # raise here if any was not acked
        return len(futures)
    finally:
        producer.close()


def keys(records: Iterable[ConsumerRecord]) -> list[str]:
    """The records' keys (ride ids) as strings, in the order read; duplicates kept, so tests can count."""
    return [r.key.decode() if r.key is not None else "" for r in records]


def header(record: ConsumerRecord, name: str) -> str | None:
    """One header of a record, decoded, or None."""
    for k, v in record.headers or []:
        if k == name:
            return v.decode(errors="replace")
    return None


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition",
               interval: float = 0.2) -> None:
    """Poll predicate() until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout:.0f} s")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------ metrics


def metrics_url(script: Script, timeout: float = 60.0) -> str:
    """The base URL a script started with --metrics-port serves on (from its start-up line)."""
    return script.wait_for_log(r"metrics on (http://\S+)/metrics", timeout=timeout)[1]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `url`/metrics, as Prometheus reads them: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float:
    """The one sample of `name` with these labels (and any others): the sum where several match."""
    found = [v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()]
    assert found, f"no sample {name}{labels} among {sorted({n for n, _ in samples})}"
    return sum(found)


def health(url: str) -> tuple[int, str]:
    """GET `url`/healthz: its status and its one line."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
            return response.status, response.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()
