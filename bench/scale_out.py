"""`make bench-scale`: transaction.py's confirm rate with 1, 2 and 3 instances sharing one group, on a
three-node cluster (replication 3, min.insync.replicas 2), and where the machine's time goes at each count.

    .venv/bin/python bench/scale_out.py [--rides N] [--instances 1,2,3] [--guarantee G] [--seed S]
                                        [--json] [--quick]

It starts its own three-node cluster (tools.cluster.LocalCluster) in a temporary folder on free ports, and
stops it at the end: the brokers' CPU is part of the figures. For each instance count k, on topics of its own:
- k transaction.py (--instance 0 .. k-1, one group) start on an empty ride_details, and the bench waits until
  the group is stable with k members and every partition assigned: no rebalance falls in the timed window;
- N ride requests (rides.py's own, serialized beforehand: the same bytes in every run) are written at once by
  an idempotent acks=all producer;
- the rate is taken from the moment the last of them is acknowledged (the producer's CPU stays out of the
  window) to the N-th committed offset, counting only the rides committed in between;
- over that same window, the CPU time of each transaction.py and each broker JVM (/proc/<pid>/stat) and the
  machine's busy time (/proc/stat): the cores each part used, and its CPU microseconds per ride;
- afterwards every ride's outcome is read back once (read_committed) and the instances' summary lines add up.
The table goes to stdout (JSON with --json), progress to stderr; any failure is one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

# `python bench/scale_out.py` puts bench/ on the path, not the project. Appended, not prepended: the project's
# email.py must not shadow the standard library's `email` package in this process.
sys.path.append(str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from raw_figures import raw_produce, ride_records  # noqa: E402
from runs import (  # noqa: E402
    PROJECT_ROOT,
    STALL_TIMEOUT,
    BenchError,
    Run,
    admin,
    committed_or_none,
    cpu_seconds,
    last_line,
    machine_busy,
    on_a_broker,
    progress,
    reconcile,
)

DEFAULT_RIDES = 60_000  # 10 to 20 s of confirming a run: seconds of steady state, not a blip
QUICK_RIDES = 3_000
DEFAULT_INSTANCES = (1, 2, 3)
NODES = 3
DEFAULT_SEED = 7
SETTLE_TIMEOUT = 120.0  # k Python starts and a group of k forming, on a loaded machine
SAMPLE = 0.05  # how often committed offsets are read while confirming
QUIET, QUIET_TIMEOUT = 0.35, 30.0  # an idle three-node cluster keeps about a quarter of 2 cores busy here
CPUS = len(os.sched_getaffinity(0))  # the cores this process (and the scripts and brokers it starts) may use


@dataclass
class Step:
    """One instance count's figures. cores: CPU seconds per second of the window, by part; us_per_ride: CPU
    microseconds per ride confirmed in the window, by part."""

    instances: int
    rides: int
    rate: float  # rides decided per second in the window
    window_s: float
    before_window: int  # rides already committed when the window opened (decided while the producer wrote)
    produce_s: float
    rides_a_transaction: float  # the whole run's rides over its committed batches (transactions, exactly-once)
    busy_before: float  # the machine's busy share in the second before the rides: the bench's own processes idle
    cores: dict[str, float]
    us_per_ride: dict[str, float]
    outcome: str


@dataclass
class ScaleReport:
    guarantee: str
    nodes: int
    cpus: int
    kafka: str
    steps: list[Step] = field(default_factory=list)
    wall_seconds: float = 0.0


# ------------------------------------------------------------------------------------------ a run


@dataclass(frozen=True)
class Group:
    """A consumer group as its coordinator describes it: its state, its members' ids, and how many partitions of
    the topic looked at are assigned among them."""

    state: str
    members: frozenset[str]
    assigned: int


def describe_group(described: dict, topic: str) -> Group:
    """One entry of KafkaAdminClient.describe_groups() (kafka-python decodes each member's assignment into
    {"assigned_partitions": [{"topic", "partitions"}, ...]}; one it could not decode stays bytes: not counted)."""
    assigned = 0
    for member in described.get("members") or []:
        assignment = member.get("member_assignment")
        if not isinstance(assignment, dict):
            continue
        for entry in assignment.get("assigned_partitions") or []:
            if entry.get("topic") == topic:
                assigned += len(entry.get("partitions") or [])
    members = frozenset(str(m.get("member_id")) for m in described.get("members") or [])
    return Group(str(described.get("group_state")), members, assigned)


def group_now(client, group: str, topic: str) -> Group:
    from kafka.errors import KafkaError

    try:
        return describe_group(client.describe_groups([group])[group], topic)
    except KafkaError as e:
        if e.retriable:  # the group's coordinator is still being found
            return Group("unknown", frozenset(), 0)
        raise


def settle(client, group: str, topic: str, k: int, partitions: int, instances: list[Run]) -> Group:
    """Wait until k members share all partitions of `topic` and the group is Stable, each instance running."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        check_running(instances)
        seen = group_now(client, group, topic)
        if seen.state == "Stable" and len(seen.members) == k and seen.assigned == partitions:
            return seen
        if time.monotonic() > deadline:
            raise BenchError(f"group {group}: state {seen.state}, {len(seen.members)} members, {seen.assigned} of "
                             f"{partitions} partitions assigned after {SETTLE_TIMEOUT:.0f} s; expected Stable, {k}, "
                             f"{partitions}")
        time.sleep(0.2)


def check_running(instances: list[Run]) -> None:
    for run in instances:
        if not run.running:
            raise BenchError(f"{run.label} exited {run.process.returncode}: {last_line(run.log())}")


def committed(client, group: str, topic: str) -> int:
    """The group's committed offsets on the topic, asked again (not read as 0) while its coordinator cannot say."""
    deadline = time.monotonic() + STALL_TIMEOUT
    while (done := committed_or_none(client, group, topic)) is None:
        if time.monotonic() > deadline:
            raise BenchError(f"group {group}: its committed offsets unknown for {STALL_TIMEOUT:.0f} s")
        time.sleep(SAMPLE)
    return done


def quiet() -> float:
    """Wait (up to QUIET_TIMEOUT s) until the machine is mostly idle: instances just started are still warming up
    (their producers' transactions, the changelog's first read) and the brokers settling the group. Returns the
    busy share of the last second."""
    deadline = time.monotonic() + QUIET_TIMEOUT
    while (busy := busy_share(1.0)) > QUIET and time.monotonic() < deadline:
        pass
    return busy


def busy_share(seconds: float) -> float:
    """The machine's busy share (0 to 1) over the next `seconds`."""
    before = machine_busy()
    time.sleep(seconds)
    after = machine_busy()
    return (after[0] - before[0]) / max(after[1] - before[1], 1)


def cpu_of(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each part (the sum over its processes)."""
    totals = {}
    for part, ids in pids.items():
        values = [cpu_seconds(pid) for pid in ids]
        if any(v is None for v in values):
            raise BenchError(f"a process of {part} exited during the window")
        totals[part] = sum(v for v in values if v is not None)
    return totals


def shares(before: dict[str, float], after: dict[str, float], busy_s: float, window: float,
           rides: int) -> tuple[dict[str, float], dict[str, float]]:
    """(cores used, CPU microseconds per ride) by part over a window, plus "machine" (busy_s: every core's busy
    time in the window, in CPU seconds) and "other" (the busy time none of the parts accounts for: the bench
    itself, the system)."""
    used = {part: after[part] - before[part] for part in before}
    used["other"] = max(0.0, busy_s - sum(used.values()))
    used["machine"] = busy_s
    cores = {part: seconds / window for part, seconds in used.items()}
    per_ride = {part: seconds / rides * 1e6 for part, seconds in used.items()}
    return cores, per_ride


def run_step(k: int, records: list[tuple[bytes, bytes]], guarantee: str, bootstrap: str, broker_pids: list[int],
             work_dir: Path, procs: list) -> Step:
    """k instances of this tree's transaction.py over the records, on fresh topics; see the module's text."""
    from common import clients, topics
    from common.settings import Settings

    n = len(records)
    prefix = f"scale-{k}-{uuid.uuid4().hex[:8]}."
    group = f"{prefix}transaction"
    source = prefix + topics.RIDE_DETAILS
    partitions = topics.PARTITIONS[topics.RIDE_DETAILS]
    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    client = admin(bootstrap)
    try:
        clients.create_topics(client, settings)  # as the scripts create them: replication 3, min.insync 2
        progress(f"{k} instance(s): starting transaction.py --instance 0..{k - 1}")
        instances = []
        for i in range(k):
            run = Run(PROJECT_ROOT, "transaction.py", "--bootstrap-servers", bootstrap, "--topic-prefix", prefix,
                      "--group-id", group, "--instance", str(i), "--guarantee", guarantee, log_dir=work_dir)
            run.label = f"transaction.py --instance {i}"
            procs.append(run)
            instances.append(run)
        settled = settle(client, group, source, k, partitions, instances)
        idle_busy = quiet()
        progress(f"{k} instance(s): group stable (machine {idle_busy:.0%} busy before the rides); "
                 f"writing {n:,} rides")
        pids = {"transaction.py": [r.process.pid for r in instances], "brokers": broker_pids}

        produce_s = raw_produce(bootstrap, source, records)
        start_done, t0 = committed(client, group, source), time.perf_counter()
        cpu0, busy0 = cpu_of(pids), machine_busy()
        if start_done > n // 2:
            raise BenchError(f"{k} instance(s): {start_done:,} of {n:,} rides decided while they were written: "
                             f"too few to time, use more --rides")
        done, last_progress = start_done, time.monotonic()
        while done < n:
            time.sleep(SAMPLE)
            check_running(instances)
            now_done = committed(client, group, source)
            if now_done > done:
                done, last_progress = now_done, time.monotonic()
            elif time.monotonic() - last_progress > STALL_TIMEOUT:
                raise BenchError(f"{k} instance(s): {done:,} of {n:,} rides committed, then no progress")
        window = time.perf_counter() - t0
        cpu1, busy1 = cpu_of(pids), machine_busy()
        if done != n:
            raise BenchError(f"{k} instance(s): {done:,} offsets committed for {n:,} rides")
        # The same members, still stable: no rebalance (a member timed out on a loaded machine) fell in the window.
        after = group_now(client, group, source)
        if after != settled:
            raise BenchError(f"{k} instance(s): the group changed during the window ({settled} then {after}): "
                             f"a rebalance, not a steady rate; run again on a quieter machine")
    finally:
        client.close()

    decided = n - start_done
    busy_s = (busy1[0] - busy0[0]) / os.sysconf("SC_CLK_TCK")  # /proc/stat counts in clock ticks
    cores, per_ride = shares(cpu0, cpu1, busy_s, window, decided)
    for run in instances:
        run.stop()
    summary = summed([run.log() for run in instances])
    outcome = reconcile(bootstrap, prefix, guarantee, n, summary, {key for key, _ in records})
    step = Step(instances=k, rides=n, rate=decided / window, window_s=window, before_window=start_done,
                produce_s=produce_s, rides_a_transaction=n / max(int(summary.get("batches", 0)), 1),
                busy_before=idle_busy, cores=cores, us_per_ride=per_ride, outcome=outcome)
    progress(f"{k} instance(s): {step.rate:,.0f} rides/s; {outcome}")
    return step


def summed(logs: list[str]) -> dict:
    """The instances' summary lines added up (counts only)."""
    from common import cli

    total: dict[str, int] = {}
    for text in logs:
        try:
            summary = cli.parse_summary(text)
        except ValueError:
            raise BenchError(f"a transaction.py logged no summary line: {last_line(text)}") from None
        for key, value in summary.items():
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value
    return total


# ------------------------------------------------------------------------------------------ the report


def format_table(report: ScaleReport) -> str:
    base = report.steps[0].rate if report.steps else 0.0
    lines = [
        f"transaction.py ({report.guarantee}) on a {report.nodes}-node cluster (replication 3, min.insync.replicas 2), "
        f"Kafka {report.kafka}, {report.cpus} cores; {report.steps[0].rides:,} rides a run" if report.steps else "",
        "",
        "| instances | rides/s | vs 1 | cores: transaction.py | brokers | other | machine | CPU us a ride: "
        "transaction.py | brokers |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report.steps:
        lines.append(
            f"| {s.instances} | {s.rate:,.0f} | {s.rate / base:.2f} | {s.cores['transaction.py']:.2f} | "
            f"{s.cores['brokers']:.2f} | {s.cores['other']:.2f} | {s.cores['machine']:.2f} of {report.cpus} | "
            f"{s.us_per_ride['transaction.py']:,.0f} | {s.us_per_ride['brokers']:,.0f} |")
    lines.append("")
    for s in report.steps:
        lines.append(f"{s.instances} instance(s): {s.outcome}; window {s.window_s:.1f} s "
                     f"({s.before_window:,} rides decided while the {s.rides:,} were written in {s.produce_s:.1f} s; "
                     f"machine {s.busy_before:.0%} busy before; {s.rides_a_transaction:,.0f} rides a batch)")
    if report.steps:
        last = report.steps[-1]
        cost = last.us_per_ride["transaction.py"] + last.us_per_ride["brokers"] + last.us_per_ride["other"]
        lines.append(
            f"where the time goes at {last.instances}: the machine {last.cores['machine'] / report.cpus:.0%} busy; "
            f"each ride costs {cost:,.0f} us of CPU in all (transaction.py {last.us_per_ride['transaction.py']:,.0f}, "
            f"the brokers {last.us_per_ride['brokers']:,.0f}), so {report.cpus} cores confirm at most about "
            f"{report.cpus / cost * 1e6:,.0f} rides/s whatever the instance count")
    lines.append(f"wall time {report.wall_seconds:.0f} s")
    return "\n".join(lines)


def to_json(report: ScaleReport) -> str:
    return json.dumps(asdict(report), indent=2)


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="transaction.py's rate with 1, 2 and 3 instances on a cluster")
    parser.add_argument("--rides", type=int, default=None, help=f"rides a run (default {DEFAULT_RIDES:,})")
    parser.add_argument("--instances", default=",".join(map(str, DEFAULT_INSTANCES)),
                        help="instance counts, comma-separated (default 1,2,3)")
    parser.add_argument("--guarantee", choices=("exactly-once", "at-least-once"), default="exactly-once")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--json", action="store_true", help="the report as JSON")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RIDES:,} rides a run: a check, not figures")
    args = parser.parse_args(argv)
    try:
        args.counts = [int(c) for c in args.instances.split(",")]
    except ValueError:
        parser.error(f"--instances: comma-separated counts, not {args.instances!r}")
    if not args.counts or any(not 1 <= c <= 6 for c in args.counts):
        parser.error("--instances: each count from 1 to 6 (ride_details has six partitions)")
    args.rides = args.rides or (QUICK_RIDES if args.quick else DEFAULT_RIDES)
    if args.rides < 100:
        parser.error("--rides: at least 100")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def bench(bootstrap: str, kafka_version: str, broker_pids: list[int], work_dir: Path, procs: list) -> ScaleReport:
        records = ride_records(args.rides, args.seed)
        report = ScaleReport(guarantee=args.guarantee, nodes=len(broker_pids), cpus=CPUS,
                             kafka=kafka_version)
        for k in args.counts:
            report.steps.append(run_step(k, records, args.guarantee, bootstrap, broker_pids, work_dir, procs))
        return report

    # Always a cluster of its own: the brokers' CPU is part of the figure, read from /proc.
    return on_a_broker(None, "bench-scale-", bench, to_json if args.json else format_table,
                       nodes=NODES)


if __name__ == "__main__":
    sys.exit(main())
