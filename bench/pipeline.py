"""`make bench`: every script's rate next to a raw kafka-python loop doing the same I/O with the same client
settings, the broker's own limit (Java's producer), each script's peak RSS, and end-to-end latency at 100
and 500 rides/s, in one run against one broker. bench/README.md says how each figure is taken.

    .venv/bin/python bench/pipeline.py [--rides N] [--seed S] [--bootstrap-servers HOST:PORT] [--json]
                                       [--baseline GIT-REV] [--quick]

Without --bootstrap-servers it starts its own broker (tools.broker.LocalBroker) in a temporary folder on
a free port, and stops it at the end. Every figure comes from its own fresh topics. The table goes to
stdout (or JSON with --json), progress to stderr; any failure is one line and a non-zero exit.

How the figures are taken, so that none includes Python or JVM start-up or a group join:
- raw producer: common.clients.producer (the very settings rides.py uses) sends N pre-serialized
  RideRequests asynchronously, then one flush; timed from the first send to the end of the flush.
- raw consumer: a plain KafkaConsumer (no group, no deserializer, no processing) reads them back; the raw
  loops (bench/raw.py) use common.clients' consumer and producer. Each is timed from its first non-empty
  poll to the N-th record done.
- rides.py: the rate of its own summary line (first send to last ack), into topics of its own.
- transaction.py, email.py, analysis.py: their input is written (untimed) before they start, the same bytes
  in every run and at any revision (email.py and analysis.py: the confirmed rides of the same requests, made
  with transaction.decide()). Watched from outside through their group's committed offsets on their
  input, which advance only once a batch's effects are done; timed from the first committed batch to the
  N-th record. Afterwards the outputs are checked: each ride's outcome once (transaction.py, read
  read_committed), one .eml per confirmed ride (email.py), the summary lines' counts.
  Not through the output topics' ends: in exactly-once mode every transaction also writes a commit marker
  per partition, which takes an offset, so output offsets overcount records.
- peak RSS: /proc/<pid>/status VmHWM just before the script is stopped (rides.py: last read as it runs).
- latency: bench/README.md.
- --baseline REV: every figure of the project's scripts is also taken from git revision REV, checked out
  into a temporary worktree, whose scripts run with that tree as cwd and PYTHONPATH (they import its
  common/): over the same input, on the same broker, in the same run, timed the same way, each figure now,
  baseline, baseline, now (see run_order), and a ratio "now / at baseline" for each. A figure REV's
  scripts cannot take is "-". The raw figures are this bench's own code: the same at any revision.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# `python bench/pipeline.py` puts bench/ on the path, not the project. Appended, not prepended: the
# project's email.py must not shadow the standard library's `email` package in this process.
sys.path.append(str(PROJECT_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/raw.py, also when loaded by path (tests)

DEFAULT_RIDES = 50_000  # about a minute on 2 cores, broker start included; runs of seconds, not blips
DEFAULT_SEED = 7
POLL_INTERVAL = 0.05  # how often the committed offsets are sampled: well under 1 % of a run of seconds
# Until a script's first batch is committed, much more often: the clock starts at that first sample, and a
# short run (--quick: 3,000 records in a tenth of a second) must not end within one interval of it.
FIRST_POLL_INTERVAL = 0.005
STALL_TIMEOUT = 60.0  # no progress for this long means something is wrong, not slow
AT_LEAST_ONCE, EXACTLY_ONCE = "at-least-once", "exactly-once"
LATENCY_RATES = (100, 500)  # rides/s: the latency goals are set at these two
LATENCY_SECONDS = 20.0  # per rate: a few thousand rides, enough for a p99
QUICK_RIDES, QUICK_LATENCY_SECONDS = 3000, 3.0
# The Java producer gets at least this many records: at the rides' N it would be timing its own JIT warm-up.
JAVA_RECORDS = 100_000  # --quick: checks the table is produced, not its numbers


# ------------------------------------------------------------------------------- figures (pure)


def rate(count: float, seconds: float) -> float:
    """Per second; 0 when nothing was timed (a count reached within one sample)."""
    return count / seconds if seconds > 0 else 0.0


def rate_between(first: tuple[float, int], last: tuple[float, int]) -> float:
    """Rate between two (time, count) samples. Counting from the first sample, not from zero, keeps the
    work done before the clock started (the first batch) out of the numerator."""
    (t0, c0), (t1, c1) = first, last
    return rate(c1 - c0, t1 - t0)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def megabytes_per_s(records_per_s: float, record_bytes: float) -> float:
    return records_per_s * record_bytes / 1e6


@dataclass
class Figure:
    name: str
    records_per_s: float | None  # the mean of its runs; None: could not be taken (shown as "-")
    mb_per_s: float | None = None
    note: str = ""
    runs: list[float] = field(default_factory=list)  # each run's rate, when there were several
    peak_rss_mb: float | None = None  # a script's VmHWM just before it stopped (the highest of its runs)


@dataclass
class Latency:
    """One latency run of the whole pipeline at a steady rate: percentiles in milliseconds."""

    rides_per_s: int
    seconds: float
    rides: int  # confirmed rides measured
    to_confirmed: dict[str, float]  # {"p50": ms, "p95": ms, "p99": ms}
    to_email: dict[str, float]


@dataclass
class Report:
    rides: int
    record_bytes: float  # mean key + value size of a ride request
    machine: dict[str, str]
    baseline: str | None = None  # the git revision whose scripts the "at baseline" figures ran
    figures: list[Figure] = field(default_factory=list)
    ratios: list[tuple[str, float | None]] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    wall_seconds: float = 0.0

    def figure(self, name: str) -> float | None:
        return next((f.records_per_s for f in self.figures if f.name == name), None)


RAW_PRODUCER = "raw kafka-python producer"
RIDES = "rides.py"
RAW_CONSUMER = "raw kafka-python consumer"
RAW_ALO = "raw at-least-once loop"
TX_ALO = "transaction.py at-least-once"
RAW_EOS = "raw transactional loop"
TX_EOS = "transaction.py exactly-once"
RAW_JSON = "raw json consumer"
ANALYSIS = "analysis.py"
RAW_FILES = "raw file-writing loop"
EMAIL = "email.py (outbox)"
BROKER_LIMIT = "broker limit (Java producer)"
# The figures of the project's own scripts: these, and only these, are measured at --baseline too (the
# raw kafka-python figures run this bench's code, the same at any revision).
SCRIPT_FIGURES = (RIDES, TX_ALO, TX_EOS, EMAIL, ANALYSIS)
# Each script figure over the raw loop that does its I/O with the same client settings: the goals.
BASELINES = {RIDES: RAW_PRODUCER, TX_ALO: RAW_ALO, TX_EOS: RAW_EOS, EMAIL: RAW_FILES, ANALYSIS: RAW_JSON}
NOW, BASELINE = "now", "baseline"  # the two trees a script figure runs from


def at_baseline(name: str) -> str:
    return f"{name} at baseline"


def run_order(baseline: bool) -> list[str]:
    """The trees one script figure runs from, in order. With a baseline: now, baseline, baseline, now.
    A drift of the machine that is linear in time (load from others, a warming broker) then adds the same
    to both sides' means, so it favours neither; alternating now/baseline once would hand it to one."""
    return [NOW, BASELINE, BASELINE, NOW] if baseline else [NOW]


Runs = dict[tuple[str, str], list[tuple[float, float | None]]]  # {(figure, side): [(rate, peak RSS MB)]}


def measure_scripts(run_one: Callable[[str, str], tuple[float, float | None] | None], baseline: bool) -> Runs:
    """Every script figure's runs, figure after figure, each in run_order: {(figure, side): [(rate, peak
    RSS MB)]}. A run that returns None (a baseline whose script cannot take this figure) is left out."""
    runs: Runs = {}
    for figure in SCRIPT_FIGURES:
        for side in run_order(baseline):
            result = run_one(figure, side)
            runs.setdefault((figure, side), [])
            if result is not None:
                runs[(figure, side)].append(result)
    return runs


COMMITTED = "first committed batch to all N committed (no start-up, no group join)"
NOTES = {
    RIDES: "its summary line: first send to last ack, no Python start-up",
    TX_ALO: COMMITTED, TX_EOS: COMMITTED, EMAIL: COMMITTED, ANALYSIS: COMMITTED,
}


def script_figures(runs: Runs, names: list[str], record_bytes: float) -> list[Figure]:
    """The figures of these script figures' runs, each followed by its twin at baseline when there is one."""
    figures = []
    for name in names:
        for side, shown in ((NOW, name), (BASELINE, at_baseline(name))):
            if (name, side) not in runs:
                continue
            rates = [r for r, _ in runs[(name, side)]]
            rss = [m for _, m in runs[(name, side)] if m is not None]
            mean = sum(rates) / len(rates) if rates else None
            mb = megabytes_per_s(mean, record_bytes) if name == RIDES and mean else None
            figures.append(Figure(shown, mean, mb, NOTES[name], rates if len(rates) > 1 else [],
                                  max(rss) if rss else None))
    return figures


def compute_ratios(report: Report) -> list[tuple[str, float | None]]:
    f = report.figure
    return [(f"{name} / {raw}", ratio(f(name), f(raw))) for name, raw in BASELINES.items()] + [
        ("exactly-once / at-least-once (the price of exactly-once)", ratio(f(TX_EOS), f(TX_ALO))),
        (f"{RAW_PRODUCER} / {BROKER_LIMIT}", ratio(f(RAW_PRODUCER), f(BROKER_LIMIT))),
    ] + [(f"{name} now / at baseline", ratio(f(name), f(at_baseline(name))))
         for name in SCRIPT_FIGURES if any(x.name == at_baseline(name) for x in report.figures)]


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95, p99 by nearest rank (a value that was measured, not an interpolation); {} for none."""
    ordered = sorted(values)
    if not ordered:
        return {}
    return {f"p{q}": ordered[max(0, -(-q * len(ordered) // 100) - 1)] for q in (50, 95, 99)}


def _thousands(x: float) -> str:
    return f"{x:,.0f}"


def _percentiles(p: dict[str, float]) -> str:
    return " / ".join(f"{p[k]:.0f}" for k in ("p50", "p95", "p99")) if p else "-"


def format_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}"


def format_table(report: Report) -> str:
    """The human-readable report: machine, one row per figure, the ratios, the checks."""
    m = report.machine
    lines = [
        f"Ride pipeline benchmark: {report.rides:,} rides of {report.record_bytes:.0f} B (key + value)",
        f"machine: {m['cores']} cores, {m['platform']}, Python {m['python']}, kafka-python {m['kafka_python']}, "
        f"Kafka {m['kafka']}; kafka-python's CRC32C: {m['crc32c']}",
        f"load average (1 min): {m['load_before']} before, {m['load_after']} after; wall time "
        f"{report.wall_seconds:.0f} s",
    ]
    if report.baseline:
        lines.append(f"baseline: git {report.baseline}, its scripts run from a temporary worktree; each script "
                     f"figure runs now, baseline, baseline, now")
    lines.append("")
    name_w = max(len(f.name) for f in report.figures) if report.figures else 10
    runs = {f.name: " / ".join(_thousands(r) for r in f.runs) for f in report.figures}
    runs_w = max(map(len, runs.values()), default=0)
    runs_head = f"  {'runs':>{runs_w}}" if runs_w else ""
    lines.append(f"{'':{name_w}}  {'records/s':>10}  {'MB/s':>6}  {'peak RSS':>8}{runs_head}")
    notes = []
    for f in report.figures:
        mb = f"{f.mb_per_s:.1f}" if f.mb_per_s is not None else ""
        rss = f"{f.peak_rss_mb:.0f} MB" if f.peak_rss_mb is not None else ""
        shown = "-" if f.records_per_s is None else _thousands(f.records_per_s)
        runs_cell = f"  {runs[f.name]:>{runs_w}}" if runs_w else ""
        mark = ""
        if f.note:
            if f.note not in notes:  # one footnote for figures timed alike
                notes.append(f.note)
            mark = f"({notes.index(f.note) + 1})"
        lines.append(f"{f.name:{name_w}}  {shown:>10}  {mb:>6}  {rss:>8}{runs_cell}  {mark}".rstrip())
    lines.append("")
    ratio_w = max(len(n) for n, _ in report.ratios) if report.ratios else 10
    lines.append("ratios")
    for name, r in report.ratios:
        lines.append(f"  {name:{ratio_w}}  {format_ratio(r):>5}")
    if report.latencies:
        lines += ["", "latency, ms (rides.py --rate R, transaction.py, email.py together): requested_at to"]
        lines.append(f"  {'rides/s':>7}  {'rides':>6}  {'confirmed p50/p95/p99':>22}  {'email p50/p95/p99':>22}")
        for lat in report.latencies:
            lines.append(f"  {lat.rides_per_s:>7}  {lat.rides:>6}  {_percentiles(lat.to_confirmed):>22}  "
                         f"{_percentiles(lat.to_email):>22}")
    if notes:
        lines.append("")
        lines.extend(f"({i}) {note}" for i, note in enumerate(notes, 1))
    if report.checks:
        lines.append("")
        counts = Counter(report.checks)  # runs that reconciled alike: one line
        lines.extend(f"check: {c}" + (f" (each of {counts[c]} runs)" if counts[c] > 1 else "") for c in counts)
    return "\n".join(lines)


def to_json(report: Report) -> str:
    data = asdict(report)
    data["ratios"] = {name: r for name, r in report.ratios}
    return json.dumps(data, indent=2)


# ------------------------------------------------------------------------------- the runs


class BenchError(Exception):
    """A run that cannot be trusted (counts that do not reconcile, a script that failed): one line."""


class Stopped(Exception):
    """SIGTERM: stop like Ctrl-C, through every finally block."""


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def ride_records(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """N (key, value) pairs exactly as rides.py sends them for this seed, serialized before any timing."""
    import rides
    from common import schemas

    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    out = []
    for _ in range(n):
        ride = rides.build_ride(rng, now)
        out.append((schemas.ride_key(ride.ride_id), schemas.encode(ride)))
    return out


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


def confirmed_records(records: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The RideConfirmed records transaction.py would publish for these requests (the rejected left out),
    made directly with its own decide(): email.py's and analysis.py's input, serialized before any timing."""
    import transaction
    from common import schemas

    now = datetime.now(timezone.utc)
    decided = (transaction.decide(schemas.RideRequest.model_validate_json(v), now) for _, v in records)
    return [(schemas.ride_key(d.ride_id), schemas.encode(d)) for d in decided
            if isinstance(d, schemas.RideConfirmed)]


def raw_produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """Seconds from the first send to the end of one flush, every record acknowledged."""
    from common import clients
    from common.settings import Settings

    producer = clients.producer(Settings(bootstrap_servers=bootstrap), "bench-raw-producer")
    try:
        started = time.perf_counter()
        futures = [producer.send(topic, key=k, value=v) for k, v in records]
        producer.flush(timeout=120)
        seconds = time.perf_counter() - started
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            raise BenchError(f"raw producer: {len(failed)} of {len(records)} records not acknowledged "
                             f"(first: {failed[0].exception!r})")
        return seconds
    finally:
        producer.close()


def raw_consume(bootstrap: str, topic: str, n: int) -> float:
    """Rate of a plain consumer reading N records from the beginning: from the first non-empty poll."""
    import raw
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             client_id="bench-raw-consumer")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        try:  # the same loop as the raw loops', doing nothing with each batch
            first, last = raw.consume_loop(consumer, n, "raw consumer", lambda batch: None)
        except raw.RawError as e:
            raise BenchError(str(e)) from None
        return rate_between(first, last)
    finally:
        consumer.close()


STOP_TIMEOUT = 10.0  # the scripts' contract: exit within 10 s of SIGTERM


class Run:
    """One script of a tree (this project, or the baseline's worktree) as a subprocess, run as a user runs it
    from that tree: cwd and PYTHONPATH are the tree, so it imports the tree's own common/, not this
    bench's. Its stdout and stderr go to one file (never a pipe: a full pipe would block it)."""

    def __init__(self, tree: Path, script: str, *args: str, log_dir: Path) -> None:
        self.name = self.label = script
        self.log_path = log_dir / f"{Path(script).stem}-{uuid.uuid4().hex[:8]}.log"
        # RIDES_* variables would set the scripts' flags behind the bench's back.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RIDES_")} | {"PYTHONPATH": str(tree)}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, script, *args], cwd=tree, env=env,
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
            raise BenchError(f"{self.name} still running after {timeout:.0f} s: {_last_line(self.log())}") from None

    def stop(self) -> None:
        """SIGTERM, then exit 0 within the contract's 10 s, or a BenchError."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"{self.name} did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM") from None
        if code != 0:
            raise BenchError(f"{self.name} exited {code} on SIGTERM: {_last_line(self.log())}")

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
        raise BenchError(f"rides.py exited {code}: {_last_line(script.log())}")
    summary = _summary(script)
    if summary.get("acknowledged") != n or summary.get("failed") != 0:
        raise BenchError(f"rides.py: acknowledged={summary.get('acknowledged')} failed={summary.get('failed')}, "
                         f"expected {n} and 0")
    return float(summary["rate"]), rss


def committed_total(admin, group: str, topic: str) -> int:
    """Rides of `topic` whose offsets group has committed (ride_details has no transaction markers:
    the bench's producer is idempotent, not transactional, so offsets count records)."""
    from kafka.errors import KafkaError

    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    except KafkaError as e:
        if e.retriable:  # no coordinator yet: the group (or __consumer_offsets itself) is being created
            return 0
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


def watch_catch_up(script: Run, admin_client, group: str, source: str, n: int) -> tuple[float, float | None]:
    """Wait until `group` has committed all N records of `source`; returns (rate from the first committed
    batch to the N-th, the script's peak RSS just before that), the script still running."""
    first = last = None
    deadline = time.monotonic() + STALL_TIMEOUT * 2  # start-up and group join included
    while True:
        if not script.running:
            raise BenchError(f"{script.label} exited {script.process.returncode}: {_last_line(script.log())}")
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


def _summary(script) -> dict:
    from common import cli

    try:
        return cli.parse_summary(script.log())
    except ValueError:
        raise BenchError(f"{script.name} logged no summary line: {_last_line(script.log())}") from None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def crc32c_implementation() -> str:
    """kafka-python checks (consumer) and computes (producer) a CRC32C over every record batch; without
    the optional `crc32c` package it does so in pure Python, which alone changes every figure here."""
    from kafka.record import util

    return "pure Python" if util._crc32c.__module__ == "kafka.record._crc32c" else "C extension (crc32c)"


def machine(kafka_version: str) -> dict[str, str]:
    import kafka

    return {
        "crc32c": crc32c_implementation(),
        "cores": str(os.cpu_count()),
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "kafka_python": kafka.__version__,
        "kafka": kafka_version,
        "load_before": f"{os.getloadavg()[0]:.2f}",
        "load_after": "",
    }


# ------------------------------------------------------------------------------- the script


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rides", type=int, default=DEFAULT_RIDES, metavar="N", help="rides per figure")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="rides.py --seed (same rides in every run)")
    p.add_argument("--bootstrap-servers", metavar="HOST:PORT",
                   help="use this cluster instead of starting a local broker (default: start one)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    p.add_argument("--baseline", metavar="GIT-REV",
                   help="also run every script figure from this git revision, interleaved with now's, in the same run")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_RIDES:,} rides and {QUICK_LATENCY_SECONDS:g} s latency runs: for CI, not for figures")
    args = p.parse_args(argv)
    if args.quick:
        args.rides = QUICK_RIDES
    if args.rides < 1000:
        p.error("--rides: at least 1000, or the timings are mostly noise")
    return args


def resolve_rev(rev: str) -> str:
    """The short hash of a commit, checked before anything runs (a typo would otherwise cost the raw figures)."""
    result = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "--verify", "--quiet",
                             f"{rev}^{{commit}}"], capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"--baseline {rev}: not a commit of this repository")
    return result.stdout.strip()


def checkout(rev: str, work_dir: Path) -> Path:
    """The project at git revision `rev` in a temporary worktree."""
    path = work_dir / "baseline"
    result = subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "add", "--detach", str(path), rev],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"--baseline {rev}: {_last_line(result.stderr)}")
    return path


def remove_checkout(path: Path) -> None:
    subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "remove", "--force", str(path)],
                   capture_output=True)


def bench(bootstrap: str, kafka_version: str, n: int, seed: int, work_dir: Path, procs: list,
          baseline: str | None = None, latency_seconds: float = LATENCY_SECONDS,
          java_records: int = JAVA_RECORDS) -> Report:
    from common import topics

    started = time.monotonic()
    records = ride_records(n, seed)
    record_bytes = sum(len(k) + len(v) for k, v in records) / n
    report = Report(rides=n, record_bytes=record_bytes, machine=machine(kafka_version), baseline=baseline)
    run_id = f"bench-{os.getpid()}-{int(time.time())}"

    # A warm-up, untimed: the broker's JIT, and its first segments and log cleaner threads, would
    # otherwise all be charged to whichever figure happens to come first.
    progress(f"warm-up: {n // 4:,} records")
    warm = create_input_topic(bootstrap, f"{run_id}-warm.")
    raw_produce(bootstrap, warm, records[: n // 4])
    raw_consume(bootstrap, warm, n // 4)

    progress(f"raw producer: {n:,} records")
    raw_topic = create_input_topic(bootstrap, f"{run_id}-raw.")
    seconds = raw_produce(bootstrap, raw_topic, records)
    producer_rate = rate(n, seconds)
    raw_producer = Figure(RAW_PRODUCER, producer_rate, megabytes_per_s(producer_rate, record_bytes),
                          "common.clients.producer (acks=all, idempotent, linger 10 ms), "
                          "pre-serialized rides, async send + one flush")

    progress(f"raw consumer: {n:,} records")
    consumer_rate = raw_consume(bootstrap, raw_topic, n)
    raw_consumer = Figure(RAW_CONSUMER, consumer_rate, megabytes_per_s(consumer_rate, record_bytes),
                          "plain KafkaConsumer, no group, no processing; first poll to N-th record")

    confirmed = confirmed_records(records)
    m = len(confirmed)
    confirmed_topic = create_input_topic(bootstrap, f"{run_id}-raw.", topics.RIDE_CONFIRMED)
    raw_produce(bootstrap, confirmed_topic, confirmed)  # untimed: the input of the figures below
    raw_figures = [raw_producer, raw_consumer, *raw_loops(bootstrap, run_id, raw_topic, confirmed_topic, n, m,
                                                          work_dir)]
    raw_figures.append(broker_limit(bootstrap, create_input_topic(bootstrap, f"{run_id}-java."), max(n, java_records),
                                    record_bytes, report.checks))

    trees = {NOW: PROJECT_ROOT}
    if baseline:
        trees[BASELINE] = checkout(baseline, work_dir)
    expected = {k for k, _ in records}
    count = iter(range(1_000_000))  # a fresh topic prefix for every run

    def run_one(figure: str, side: str) -> tuple[float, float | None] | None:
        """One run of one script figure from one tree, on fresh topics: (rate, peak RSS MB). At the
        baseline, a figure its scripts cannot take (an email.py without today's flags, say) is None."""
        prefix = f"{run_id}-{next(count)}-{side}."
        label = figure if side == NOW else f"{figure} at {baseline}"
        try:
            return run_script(figure, trees[side], label, prefix)
        except BenchError as e:
            if side == NOW:
                raise
            report.checks.append(f"{label}: not measured ({e})")
            return None

    def run_script(figure: str, tree: Path, label: str, prefix: str) -> tuple[float, float | None]:
        if figure == RIDES:
            progress(f"{label}: --count {n:,} --seed {seed} --topic-prefix {prefix}")
            return run_rides(tree, bootstrap, prefix, n, seed, work_dir, procs)
        if figure in (TX_ALO, TX_EOS):
            guarantee = AT_LEAST_ONCE if figure == TX_ALO else EXACTLY_ONCE
            # Its input: the very same N records for every run, written before its clock starts.
            raw_produce(bootstrap, create_input_topic(bootstrap, prefix), records)
            progress(f"{label} over {n:,} rides, --topic-prefix {prefix}")
            tx_rate, rss, summary = run_consumer(tree, "transaction.py", ["--guarantee", guarantee], label,
                                                 bootstrap, prefix, topics.RIDE_DETAILS, n, work_dir, procs)
            report.checks.append(f"{label}: " + reconcile(bootstrap, prefix, guarantee, n, summary, expected))
            return tx_rate, rss
        # email.py and analysis.py: the same M confirmed rides in every run, written before the clock starts.
        raw_produce(bootstrap, create_input_topic(bootstrap, prefix, topics.RIDE_CONFIRMED), confirmed)
        progress(f"{label} over {m:,} confirmed rides, --topic-prefix {prefix}")
        out = work_dir / prefix
        if figure == EMAIL:
            result = run_consumer(tree, "email.py", ["--outbox", str(out / "outbox")], label, bootstrap, prefix,
                                  topics.RIDE_CONFIRMED, m, work_dir, procs)
            report.checks.append(f"{label}: " + reconcile_email(result[2], out / "outbox", m))
        else:
            result = run_consumer(tree, "analysis.py", ["--state", str(out / "analysis.db")], label, bootstrap,
                                  prefix, topics.RIDE_CONFIRMED, m, work_dir, procs)
            report.checks.append(f"{label}: " + reconcile_analysis(result[2], m))
        return result[0], result[1]

    try:
        runs = measure_scripts(run_one, baseline is not None)
    finally:
        if baseline:
            remove_checkout(trees[BASELINE])

    report.figures = order_figures(raw_figures, runs, record_bytes)
    report.ratios = compute_ratios(report)
    for rides_per_s in LATENCY_RATES:
        progress(f"latency: rides.py --rate {rides_per_s} for {latency_seconds:.0f} s, transaction.py, email.py")
        report.latencies.append(run_latency(bootstrap, f"{run_id}-latency-{rides_per_s}.", rides_per_s,
                                            latency_seconds, seed, work_dir, procs))
    report.machine["load_after"] = f"{os.getloadavg()[0]:.2f}"
    report.wall_seconds = time.monotonic() - started
    return report


def latency_samples(confirmed: list[tuple[str, int]], email_mtimes: dict[str, float | None],
                    requested: dict[str, datetime]) -> tuple[list[float], list[float]]:
    """Milliseconds from each ride's requested_at to its confirmed record's timestamp (CreateTime: stamped
    by transaction.py's producer when it sent the record) and to its .eml file's mtime (when email.py wrote
    it). confirmed: (ride_id, timestamp ms); requested: ride_id -> requested_at; email_mtimes: ride_id ->
    mtime (s), None for a ride with no email."""
    to_confirmed, to_email = [], []
    for ride_id, created_ms in confirmed:
        start = requested[ride_id].timestamp()
        to_confirmed.append(created_ms - start * 1000)
        mtime = email_mtimes.get(ride_id)
        if mtime is not None:
            to_email.append((mtime - start) * 1000)
    return to_confirmed, to_email


def wait_for(done: Callable[[], int], target: int, what: str, scripts: list, timeout: float = STALL_TIMEOUT) -> None:
    """Sample done() until it reaches target; a BenchError if a script exits first, or if done() has not
    grown for `timeout` s (a backlog that shrinks is slow, not stuck)."""
    deadline, best = time.monotonic() + timeout, -1
    while (count := done()) < target:
        for script in scripts:
            if not script.running:
                raise BenchError(f"{script.label} exited {script.process.returncode}: {_last_line(script.log())}")
        if count > best:
            deadline, best = time.monotonic() + timeout, count
        if time.monotonic() > deadline:
            raise BenchError(f"latency run: {what}: {count} of {target}, then no progress for {timeout:.0f} s")
        time.sleep(POLL_INTERVAL)


def run_latency(bootstrap: str, prefix: str, rides_per_s: int, seconds: float, seed: int, work_dir: Path,
                procs: list) -> Latency:
    """rides.py --rate R for `seconds`, transaction.py (exactly-once) and email.py (outbox) running together
    on fresh topics; the latency of every ride, from requested_at to confirmed and to emailed."""
    from common import topics

    outbox = work_dir / prefix / "outbox"
    common_args = ["--bootstrap-servers", bootstrap, "--topic-prefix", prefix]
    create_input_topic(bootstrap, prefix)
    tx = Run(PROJECT_ROOT, "transaction.py", *common_args, "--group-id", f"{prefix}transaction", log_dir=work_dir)
    mail = Run(PROJECT_ROOT, "email.py", *common_args, "--group-id", f"{prefix}email", "--outbox", str(outbox),
               log_dir=work_dir)
    procs += [tx, mail]
    # Both consumers ready before the first ride: no start-up or group join in the figures. email.py once it
    # owns its partitions ("partitions assigned: none" comes first, while the group forms); transaction.py once
    # it has also read its decided rides back (its changelog, restored after the assignment).
    ready = {mail: f"partitions assigned: {prefix}", tx: "restored "}
    wait_for(lambda: sum(line in script.log() for script, line in ready.items()), 2, "consumers ready",
             [tx, mail], STALL_TIMEOUT * 2)
    n = int(rides_per_s * seconds)
    rides = Run(PROJECT_ROOT, "rides.py", *common_args, "--rate", str(rides_per_s), "--count", str(n), "--seed",
                str(seed), log_dir=work_dir)
    procs.append(rides)
    if rides.wait(timeout=seconds * 3 + STALL_TIMEOUT) != 0:
        raise BenchError(f"rides.py --rate {rides_per_s} failed: {_last_line(rides.log())}")
    watcher = admin(bootstrap)
    try:
        wait_for(lambda: committed_total(watcher, f"{prefix}transaction", prefix + topics.RIDE_DETAILS), n,
                 "rides decided", [tx, mail])
    finally:
        watcher.close()
    confirmed = read_records(bootstrap, [prefix + topics.RIDE_CONFIRMED])
    wait_for(lambda: sum(1 for _ in outbox.glob("*.eml")), len(confirmed), "confirmed rides emailed", [tx, mail])
    mail.stop()
    tx.stop()
    requested = {}
    for r in confirmed:
        value = json.loads(r.value)
        requested[value["ride_id"]] = datetime.fromisoformat(value["requested_at"])
    mtimes = {ride_id: _mtime(outbox / f"{ride_id}.eml") for ride_id in requested}
    to_confirmed, to_email = latency_samples([(json.loads(r.value)["ride_id"], r.timestamp) for r in confirmed],
                                             mtimes, requested)
    if len(to_email) != len(confirmed):
        raise BenchError(f"latency run: {len(to_email)} emails for {len(confirmed)} confirmed rides")
    return Latency(rides_per_s, seconds, len(confirmed), percentiles(to_confirmed), percentiles(to_email))


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def order_figures(raw_figures: list[Figure], runs: Runs, record_bytes: float) -> list[Figure]:
    """Each script figure (and its twin at baseline) right under the raw figure it is compared with."""
    raw = {f.name: f for f in raw_figures}
    shown = [raw.pop(RAW_PRODUCER), *script_figures(runs, [RIDES], record_bytes)]
    for name, baseline in BASELINES.items():
        if name != RIDES and baseline in raw:
            shown += [raw.pop(baseline), *script_figures(runs, [name], record_bytes)]
    return shown + list(raw.values())


def raw_loops(bootstrap: str, run_id: str, requests: str, confirmed: str, n: int, m: int,
              work_dir: Path) -> list[Figure]:
    """The raw kafka-python loops (bench/raw.py): requests is a topic of the N ride requests, confirmed of
    the M confirmed rides."""
    import raw

    try:
        return _raw_loops(raw, bootstrap, run_id, requests, confirmed, n, m, work_dir)
    except raw.RawError as e:
        raise BenchError(str(e)) from None


def _raw_loops(raw, bootstrap: str, run_id: str, requests: str, confirmed: str, n: int, m: int,
               work_dir: Path) -> list[Figure]:
    progress(f"raw json consumer: {m:,} confirmed rides")
    json_rate = rate_between(*raw.json_consumer(bootstrap, confirmed, m))
    progress(f"raw at-least-once loop: {n:,} records")
    alo_rate = rate_between(*raw.transform_loop(bootstrap, requests, f"{run_id}-raw.alo-out", n, False))
    progress(f"raw transactional loop: {n:,} records")
    eos_rate = rate_between(*raw.transform_loop(bootstrap, requests, f"{run_id}-raw.eos-out", n, True))
    progress(f"raw file-writing loop: {m:,} confirmed rides")
    files_rate = rate_between(*raw.file_loop(bootstrap, confirmed, m, work_dir / f"{run_id}-raw-files"))
    scripts_consumer = "common.clients.consumer (group, read_committed, 500 a poll)"
    return [
        Figure(RAW_JSON, json_rate, None, f"{scripts_consumer}: poll + json.loads, over the confirmed rides"),
        Figure(RAW_ALO, alo_rate, None, f"{scripts_consumer} + producer: json in, small json out; per batch "
                                        "flush, then commit"),
        Figure(RAW_EOS, eos_rate, None, "the same in one transaction per batch (send_offsets_to_transaction)"),
        Figure(RAW_FILES, files_rate, None, f"{scripts_consumer}: json-decode, one small file per record "
                                            "(email.py's write: aside, then rename), commit per batch"),
    ]


def broker_limit(bootstrap: str, topic: str, records: int, record_bytes: float, checks: list[str]) -> Figure:
    """Java's ProducerPerformance on records of the rides' size (bench/broker_limit.py); "-" with a check
    line when it cannot run (no Maven, offline)."""
    import broker_limit as java

    progress(f"broker limit: Java's ProducerPerformance, {records:,} records of {record_bytes:.0f} B")
    note = (f"Java's ProducerPerformance (kafka-tools {java.KAFKA_VERSION}), acks=all, idempotent, linger 10 ms, "
            f"{records:,} records of the rides' mean size, its own timing")
    try:
        limit = java.producer_performance(bootstrap, topic, records, round(record_bytes))
    except (java.LimitError, subprocess.TimeoutExpired, OSError) as e:
        checks.append(f"{BROKER_LIMIT}: not measured ({e})")
        return Figure(BROKER_LIMIT, None, None, note)
    return Figure(BROKER_LIMIT, limit, megabytes_per_s(limit, record_bytes), note)


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


def _raise_stopped(signum, frame):
    raise Stopped()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_stopped)
    from tools.broker import KAFKA_VERSION, BrokerError, LocalBroker

    procs: list[Run] = []  # every subprocess started, killed (by pid) in finally if still running
    broker = None
    wall = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            work_dir = Path(tmp)
            try:
                baseline = resolve_rev(args.baseline) if args.baseline else None
                if args.bootstrap_servers:
                    bootstrap, kafka_version = args.bootstrap_servers, "(existing cluster)"
                else:
                    progress("starting a local Kafka broker")
                    broker = LocalBroker(data_dir=work_dir / "kafka")
                    bootstrap = broker.start(port=0, fresh=True)
                    kafka_version = KAFKA_VERSION
                    progress(f"broker ready at {bootstrap}")
                report = bench(bootstrap, kafka_version, args.rides, args.seed, work_dir, procs, baseline,
                               *((QUICK_LATENCY_SECONDS, QUICK_RIDES) if args.quick else ()))
            finally:
                for proc in procs:
                    proc.kill()
                if broker is not None:
                    progress("stopping the broker")
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
    report.wall_seconds = time.monotonic() - wall
    print(to_json(report) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
