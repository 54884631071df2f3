"""The runs of bench/pipeline.py: the project's scripts as subprocesses (Run) and how each is watched and
checked. rides.py runs to its end (run_rides); transaction.py, email.py and analysis.py catch up on input
written before they start, watched through their group's committed offsets (run_consumer, watch_catch_up);
afterwards what they did is reconciled with what they were given (reconcile*). Also the small Kafka helpers
the bench shares (an admin client, fresh input topics, reading a topic to its end) and its one error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from report import rate_between

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # today's tree: the scripts' "now"
POLL_INTERVAL = 0.05  # how often the committed offsets are sampled: well under 1 % of a run of seconds
# Until a script's first batch is committed, much more often: the clock starts at that first sample, and a
# short run (--quick: 3,000 records in a tenth of a second) must not end within one interval of it.
FIRST_POLL_INTERVAL = 0.005
STALL_TIMEOUT = 60.0  # no progress for this long means something is wrong, not slow


class BenchError(Exception):
    """A run that cannot be trusted (counts that do not reconcile, a script that failed): one line."""


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def admin(bootstrap: str):
    """A plain admin client: the bench only creates its input topics and watches committed offsets."""
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")


def create_input_topic(bootstrap: str, prefix: str, topic: str = "") -> str:
    """A fresh input topic (ride_details unless named) under this prefix, with the pipeline's partition
    count; the scripts create the other topics they need themselves, as they do for users."""
    from common import topics

    topic = topic or topics.RIDE_DETAILS
    name = prefix + topic
    client = admin(bootstrap)
    try:
        client.create_topics({name: {"num_partitions": topics.PARTITIONS[topic]}}, wait_for_metadata=True)
    finally:
        client.close()
    return name


STOP_TIMEOUT = 10.0  # the scripts' contract: exit within 10 s of SIGTERM


class Run:
    """One script of a tree (this project, or the baseline's worktree) as a subprocess: the tree's script, with
    the tree on PYTHONPATH, so it imports the tree's own common/, not this bench's. It runs in log_dir, where its
    stdout and stderr go to one file (never a pipe: a full pipe would block it), and where a relative default
    path lands; not in the tree, whose .env may point the scripts at another (secured) cluster than the bench's."""

    def __init__(self, tree: Path, script: str, *args: str, log_dir: Path) -> None:
        self.name = self.label = script
        self.log_path = log_dir / f"{Path(script).stem}-{uuid.uuid4().hex[:8]}.log"
        # RIDES_* variables would set the scripts' flags behind the bench's back, SMTP_* send the emails.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RIDES_", "SMTP_"))} | {"PYTHONPATH": str(tree)}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, str(tree / script), *args], cwd=log_dir, env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"{self.name} still running after {timeout:.0f} s: {last_line(self.log())}") from None

    def stop(self) -> None:
        """SIGTERM, then exit 0 within the contract's 10 s, or a BenchError."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"{self.name} did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM") from None
        if code != 0:
            raise BenchError(f"{self.name} exited {code} on SIGTERM: {last_line(self.log())}")

    def kill(self) -> None:
        if self.running:
            self.process.kill()
        self.process.wait()


def run_rides(tree: Path, bootstrap: str, prefix: str, n: int, seed: int, log_dir: Path,
              procs: list) -> tuple[float, float | None]:
    """The tree's rides.py --count N into this prefix; returns the rate of its summary line and its peak RSS."""
    script = Run(tree, "rides.py", "--count", str(n), "--seed", str(seed), "--bootstrap-servers", bootstrap,
                 "--topic-prefix", prefix, log_dir=log_dir)
    procs.append(script)
    rss, deadline = None, time.monotonic() + 300
    while script.running and time.monotonic() < deadline:  # it exits by itself: its peak is read as it runs
        rss = peak_rss_mb(script.process.pid) or rss
        time.sleep(POLL_INTERVAL)
    code = script.wait(timeout=max(0.0, deadline - time.monotonic()))
    if code != 0:
        raise BenchError(f"rides.py exited {code}: {last_line(script.log())}")
    summary = _summary(script)
    if summary.get("acknowledged") != n or summary.get("failed") != 0:
        raise BenchError(f"rides.py: acknowledged={summary.get('acknowledged')} failed={summary.get('failed')}, "
                         f"expected {n} and 0")
    return float(summary["rate"]), rss


def committed_total(admin, group: str, topic: str) -> int:
    """Rides of `topic` whose offsets group has committed (ride_details has no transaction markers:
    the bench's producer is idempotent, not transactional, so offsets count records); 0 while the group's
    coordinator cannot answer."""
    return committed_or_none(admin, group, topic) or 0


def committed_or_none(admin, group: str, topic: str) -> int | None:
    """committed_total, or None while the group's coordinator cannot answer (a figure must not read that as 0)."""
    from kafka.errors import KafkaError

    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    except KafkaError as e:
        if e.retriable:  # no coordinator yet: the group (or __consumer_offsets itself) is being created
            return None
        raise
    return sum(o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset > 0)


def peak_rss_mb(pid: int) -> float | None:
    """A process's peak resident set so far (VmHWM), in MB; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(kb) / 1024 if kb else None


def cpu_seconds(pid: int | None) -> float | None:
    """A process's CPU time so far (user + system, all its threads), from /proc/<pid>/stat; None if it is gone."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": the comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values[:8]) - idle, sum(values[:8])


def watch_catch_up(script: Run, admin_client, group: str, source: str, n: int) -> tuple[float, float | None]:
    """Wait until `group` has committed all N records of `source`; returns (rate from the first committed
    batch to the N-th, the script's peak RSS just before that), the script still running."""
    first = last = None
    deadline = time.monotonic() + STALL_TIMEOUT * 2  # start-up and group join included
    while True:
        if not script.running:
            raise BenchError(f"{script.label} exited {script.process.returncode}: {last_line(script.log())}")
        done = committed_total(admin_client, group, source)
        now = time.perf_counter()
        if done and first is None:
            first = (now, done)
        if last is None or done > last[1]:
            deadline = time.monotonic() + STALL_TIMEOUT
        last = (now, done)
        if done >= n:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"{script.label}: {done} of {n} records committed, then no progress")
        time.sleep(POLL_INTERVAL if first else FIRST_POLL_INTERVAL)
    if done != n:
        raise BenchError(f"{script.label}: {done} offsets committed for {n} records")
    assert first is not None  # n > 0 records were committed
    if first[1] == n:
        raise BenchError(f"{script.label}: all {n:,} records committed within one sample: too few to time, "
                         f"use more --rides")
    return rate_between(first, last), peak_rss_mb(script.process.pid)


def run_consumer(tree: Path, script_name: str, args: list[str], label: str, bootstrap: str, prefix: str,
                 source: str, n: int, log_dir: Path, procs: list) -> tuple[float, float | None, dict]:
    """The tree's script over N pre-produced records of prefix+source in its own group: (rate, peak RSS MB,
    its summary line)."""
    group = f"{prefix}{Path(script_name).stem}"
    watcher = admin(bootstrap)
    try:
        script = Run(tree, script_name, *args, "--bootstrap-servers", bootstrap, "--topic-prefix", prefix,
                     "--group-id", group, log_dir=log_dir)
        script.label = label
        procs.append(script)
        try:
            rate_, rss = watch_catch_up(script, watcher, group, prefix + source, n)
        except BenchError:
            script.kill()  # a baseline's figure that failed must not load the machine for the next ones
            raise
    finally:
        watcher.close()
    script.stop()
    return rate_, rss, _summary(script)


def read_records(bootstrap: str, topic_names: list[str]) -> list:
    """Every record in these topics as read_committed readers see them: read to each partition's end.

    With read_committed, end_offsets() answers the last stable offset (the ListOffsets request carries the
    isolation level), and the position moves past the transactions' commit markers, so "position == end"
    is "everything read"."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed", client_id="bench-reader")
    try:
        tps = [TopicPartition(t, p) for t in topic_names for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list = []
        deadline = time.monotonic() + STALL_TIMEOUT
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for rs in consumer.poll(timeout_ms=500).values():
                records.extend(rs)
            if time.monotonic() > deadline:
                raise BenchError(f"could not read {', '.join(topic_names)} to their end within {STALL_TIMEOUT:.0f} s")
        return records
    finally:
        consumer.close()


def read_outcomes(bootstrap: str, topic_names: list[str]) -> list[bytes]:
    return [r.key for r in read_records(bootstrap, topic_names)]


def reconcile(bootstrap: str, prefix: str, guarantee: str, n: int, summary: dict, expected: set[bytes]) -> str:
    """Every ride's outcome exactly once, by the script's own count and by what readers see."""
    from common import topics

    counted = int(summary.get("confirmed", 0)) + int(summary.get("rejected", 0))
    if counted != n or summary.get("dead_lettered") != 0 or summary.get("aborted") != 0 \
            or summary.get("duplicates", 0) != 0:
        raise BenchError(f"transaction.py ({guarantee}) summary does not reconcile with {n} rides: "
                         f"confirmed={summary.get('confirmed')} rejected={summary.get('rejected')} "
                         f"dead_lettered={summary.get('dead_lettered')} aborted={summary.get('aborted')}")
    keys = read_outcomes(bootstrap, [prefix + topics.RIDE_CONFIRMED, prefix + topics.RIDE_REJECTED])
    if len(keys) != n or set(keys) != expected:
        raise BenchError(f"transaction.py ({guarantee}): readers see {len(keys)} outcomes for {len(set(keys))} "
                         f"distinct rides; expected each of the {n} rides once")
    return f"{summary['confirmed']:,} confirmed + {summary['rejected']:,} rejected = {n:,}, each ride once"


def reconcile_email(summary: dict, outbox: Path, m: int) -> str:
    files = sum(1 for _ in outbox.glob("*.eml"))
    if summary.get("emailed") != m or summary.get("dead_lettered") != 0 or files != m:
        raise BenchError(f"email.py: emailed={summary.get('emailed')} dead_lettered={summary.get('dead_lettered')}, "
                         f"{files} .eml files; expected {m}, 0 and {m}")
    return f"{m:,} emailed, {files:,} .eml files"


def reconcile_analysis(summary: dict, m: int) -> str:
    if summary.get("total") != m or summary.get("dead_lettered") != 0:
        raise BenchError(f"analysis.py: total={summary.get('total')} dead_lettered={summary.get('dead_lettered')}, "
                         f"expected {m} and 0")
    return f"{m:,} rides counted"


def _summary(script) -> dict:
    from common import cli

    try:
        return cli.parse_summary(script.log())
    except ValueError:
        raise BenchError(f"{script.name} logged no summary line: {last_line(script.log())}") from None


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


R = TypeVar("R")  # a bench's report: it has a wall_seconds


class Stopped(Exception):
    """SIGTERM: stop like Ctrl-C, through every finally block."""


def _raise_stopped(signum, frame):
    raise Stopped()


def on_a_broker(bootstrap_servers: str | None, folder_prefix: str,
                bench: Callable[[str, str, list[int], Path, list], R], show: Callable[[R], str], nodes: int = 1) -> int:
    """A bench's main: in a temporary folder, on the given cluster or on a Kafka of its own (tools.broker's one
    broker, or tools.cluster's `nodes` nodes), run bench(bootstrap, kafka_version, broker_pids, work_dir, procs)
    and print show(report) with its wall time. broker_pids: the JVMs it started (none on a given cluster). Every
    subprocess put in procs, and the brokers, are stopped (by pid) whatever happens; SIGTERM stops it as Ctrl-C
    does; an error is one line and exit 1."""
    signal.signal(signal.SIGTERM, _raise_stopped)
    from tools.broker import KAFKA_VERSION, BrokerError, LocalBroker
    from tools.cluster import LocalCluster

    procs: list = []  # every subprocess started, killed (by pid) in finally if still running
    broker: LocalBroker | LocalCluster | None = None
    broker_pids: list[int] = []
    wall = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix=folder_prefix) as tmp:
            work_dir = Path(tmp)
            try:
                if bootstrap_servers:
                    bootstrap, kafka_version = bootstrap_servers, "(existing cluster)"
                else:
                    progress("starting a local Kafka broker" if nodes == 1 else f"starting a local {nodes}-node Kafka")
                    broker = LocalBroker(data_dir=work_dir / "kafka") if nodes == 1 else \
                        LocalCluster(work_dir / "kafka", nodes=nodes)
                    bootstrap = broker.start(port=0, fresh=True)
                    kafka_version = KAFKA_VERSION
                    pids = [broker.pid] if isinstance(broker, LocalBroker) else list(broker.node_pids.values())
                    broker_pids = [pid for pid in pids if pid is not None]
                    progress(f"Kafka ready at {bootstrap}")
                report = bench(bootstrap, kafka_version, broker_pids, work_dir, procs)
            finally:
                for proc in procs:
                    proc.kill()
                if broker is not None:
                    progress("stopping Kafka")
                    broker.stop()
    except (KeyboardInterrupt, Stopped):
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except (BenchError, BrokerError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a Kafka error, say: still one line, never a traceback wall
        text = str(e) if str(e).startswith(type(e).__name__) else f"{type(e).__name__}: {e}"
        print(f"bench: error: {text.splitlines()[0] if text else type(e).__name__}", file=sys.stderr)
        return 1
    report.wall_seconds = time.monotonic() - wall  # type: ignore[attr-defined]
    print(show(report))
    return 0
