"""Failover: rides flow at a fixed rate through the whole pipeline on a real 3-node cluster (replication 3,
min.insync.replicas 2) while the leader of ride_details[0] is SIGKILLed and started again ten seconds later, and
then every node in turn is stopped cleanly and started again (a rolling restart), each step waiting until every
partition of the cluster is back to its three in-sync replicas.

Then reconcile as the chaos test does: every ride in ride_details is decided (confirmed or rejected) exactly once
(read_committed), every confirmed rider has exactly one email, and analysis counted every confirmed ride once.
And the pipeline kept going: every rides.py run had all of its --count acknowledged.

How long each failover stalled the pipeline is measured, not asserted (timed assertions are flaky on a shared
machine): for each event, the longest request-to-confirmed (confirmed_at - requested_at) and request-to-email
(the .eml file's mtime - requested_at) latency of the rides requested in the WINDOW seconds after it, next to the
baseline of the rides done before the first event. The table is printed, and written as JSON under the test's
tmp_path (its path is in every assertion message).

Run on its own with `pytest -m failover -s`.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from common import topics
from common.schemas import RideConfirmed
from tests.integration.pipeline import Script, keys, parse_summary, read_all, unique_prefix, wait_until
from tests.integration.test_chaos import Outcome, Pipeline
from tools.cluster import LocalCluster

pytestmark = [pytest.mark.failover, pytest.mark.timeout(600)]

RATE = 50  # rides per second
# The rides flow until TAIL s after the last event: a first rides.py with FIRST s of rides (the kill, the restart
# and the rolling restart take about 60 to 90 s on 2 cores), then, while the failovers last longer (a node's start
# took 15 to 60 s on a busy machine), another one with MORE s of rides, and so on.
FIRST, MORE, TAIL = 75, 15, 10
BASELINE = 8.0  # seconds of steady flow, every consumer at work, before the first event
DOWN = 10.0  # how long the killed leader stays down
WINDOW = 30.0  # an event's stall: the longest latency of the rides requested in the WINDOW s after it
IN_SYNC_TIMEOUT = 120.0  # a node back, until every partition has its three in-sync replicas again
STALLED = 90.0  # waiting for the pipeline to catch up: a failure once nothing has moved for this long


# ------------------------------------------------------------------------------------------ the cluster


def _admin(cluster: LocalCluster) -> KafkaAdminClient:
    live = ",".join(cluster.node(i).bootstrap_servers for i in cluster.running_nodes())
    return KafkaAdminClient(bootstrap_servers=live, client_id="tests-failover", request_timeout_ms=5000)


def out_of_sync(cluster: LocalCluster) -> list[str]:
    """Every partition of the cluster (the pipeline's topics, the committed offsets', the transactions') that has no
    leader or fewer in-sync replicas than replicas, as "topic[p] leader=.. isr=[..]"; one line saying why if the
    cluster cannot be asked right now."""
    try:
        admin = _admin(cluster)
        try:
            described = admin.describe_topics()
        finally:
            admin.close()
    except Exception as e:  # a node going or coming back: ask again
        return [f"describe_topics failed: {e!r}"]
    lagging = []
    for topic in described:
        if topic.get("error_code"):
            lagging.append(f"{topic['name']}: error {topic['error_code']}")
        for p in topic.get("partitions") or []:
            if p["leader_id"] < 0 or len(p["isr_nodes"]) < len(p["replica_nodes"]):
                lagging.append(f"{topic['name']}[{p['partition_index']}] leader={p['leader_id']} "
                               f"isr={sorted(p['isr_nodes'])}")
    return lagging


def wait_in_sync(cluster: LocalCluster, alive: Callable[[], bool], timeout: float = IN_SYNC_TIMEOUT) -> float:
    """Wait until every partition of the cluster has its full ISR again; returns how long that took."""
    started = time.monotonic()
    lagging = out_of_sync(cluster)
    while lagging:
        alive()
        assert time.monotonic() - started < timeout, \
            f"partitions still out of sync {timeout:.0f} s after a node's restart: {lagging[:10]}"
        time.sleep(0.5)
        lagging = out_of_sync(cluster)
    return time.monotonic() - started


def leader_of(cluster: LocalCluster, topic: str, partition: int, timeout: float = 60.0) -> int:
    """The node leading topic[partition], asked until the cluster knows the topic and the partition has a leader."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            leader = cluster.leader_of(topic, partition)
        except Exception as e:  # not known to the node asked yet, or a connection to a node that just went
            leader, why = -1, repr(e)
        else:
            why = "no leader"
        if leader >= 0:
            return leader
        assert time.monotonic() < deadline, f"{topic}[{partition}]: {why} after {timeout:.0f} s"
        time.sleep(0.3)


def hold(seconds: float, alive: Callable[[], bool]) -> None:
    """Sleep, failing at once if a script of the pipeline dies meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive()
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


# ------------------------------------------------------------------------------------------ the rides


class Flow:
    """rides.py at RATE rides/s from start() until stop(), each run to the end of its --count: a first run of FIRST
    seconds' worth of rides; if stop() has not come a second before it is due to end, another run of MORE seconds'
    worth (another seed: other rides), and so on. finish() asserts that every run had all its rides acknowledged."""

    def __init__(self, bootstrap: str, prefix: str, seed: int, log_dir: Path) -> None:
        self.bootstrap, self.prefix, self.seed, self.log_dir = bootstrap, prefix, seed, log_dir
        self.runs: list[tuple[Script, int]] = []  # each run and its --count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flow, name="failover-rides", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _flow(self) -> None:
        seconds = FIRST
        while True:
            count, seed = RATE * seconds, self.seed + len(self.runs)
            run = Script("rides.py", "--count", str(count), "--rate", str(RATE), "--seed", str(seed), "--wait", "120",
                         bootstrap=self.bootstrap, prefix=self.prefix, log_dir=self.log_dir)
            self.runs.append((run, count))
            due = time.monotonic() + seconds - 1.0
            while run.running and time.monotonic() < due:
                if self._stop.wait(0.2):
                    return
            if self._stop.is_set() or run.process.poll() not in (None, 0):
                return  # stopped, or that run failed: finish() says why
            seconds = MORE

    def stop(self) -> None:
        """No run after the current one (which goes on to the end of its --count)."""
        self._stop.set()
        self._thread.join(timeout=30)

    def finish(self, timeout: float) -> dict:
        """Wait for every run to end by itself (within `timeout` s in all); assert that each exited 0 with all of
        its --count acknowledged. Returns the totals."""
        self.stop()
        deadline = time.monotonic() + timeout
        totals: Counter[str] = Counter()
        for run, count in self.runs:
            run.wait(timeout=max(1.0, deadline - time.monotonic()))
            summary = parse_summary(run.log())
            assert summary["acknowledged"] == count, f"rides.py --count {count}: {summary}"
            totals.update(runs=1, requested=int(summary["requested"]), acknowledged=int(summary["acknowledged"]),
                          failed=int(summary["failed"]))
        return dict(totals)

    def kill(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # never started when the pipeline failed to start
            self._thread.join(timeout=30)
        for run, _ in self.runs:
            run.kill()


# ------------------------------------------------------------------------------------------ the stalls


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stalls(events: list[dict], rides: list[tuple[float, float, float | None]], since: float,
           window: float = WINDOW) -> dict:
    """Pure: per event, the rides requested in the `window` s after it: how many, and their longest request-to-
    confirmed and request-to-email latency. The baseline: the rides requested from `since` and confirmed (emailed)
    before the first event, whose latency the first event's stall has no part in.

    events: {"event", "at" (epoch s), ...}; rides: (requested_at, confirmed_at, emailed_at or None), epoch s.
    Latencies in seconds."""
    first = min((e["at"] for e in events), default=float("inf"))
    before = [r for r in rides if since <= r[0]]
    to_confirmed = [c - q for q, c, _ in before if c < first]
    to_email = [m - q for q, _, m in before if m is not None and m < first]
    baseline = {
        "rides": len(to_confirmed),
        "p50_to_confirmed_s": percentile(to_confirmed, 0.5), "p99_to_confirmed_s": percentile(to_confirmed, 0.99),
        "p50_to_email_s": percentile(to_email, 0.5), "p99_to_email_s": percentile(to_email, 0.99),
    }
    last_requested = max((q for q, _, _ in rides), default=0.0)
    rows = []
    for e in events:
        inside = [r for r in rides if e["at"] <= r[0] < e["at"] + window]
        rows.append({
            **e,
            "under_load": e["at"] < last_requested,
            "rides": len(inside),
            "max_to_confirmed_s": max((c - q for q, c, _ in inside), default=None),
            "max_to_email_s": max((m - q for q, _, m in inside if m is not None), default=None),
        })
    return {"window_s": window, "baseline": baseline, "events": rows}


def table(report: dict, started: float) -> str:
    """The report as a few lines of text; times `at` in seconds after `started`."""
    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    b = report["baseline"]
    lines = [
        f"failover stalls, in seconds: the longest latency of the rides requested in the {report['window_s']:.0f} s "
        f"after each event. Baseline ({b['rides']} rides confirmed before the first event): to confirmed p50 "
        f"{s(b['p50_to_confirmed_s'])} p99 {s(b['p99_to_confirmed_s'])}, to email p50 {s(b['p50_to_email_s'])} "
        f"p99 {s(b['p99_to_email_s'])}",
        f"  {'event':<44} {'at':>6} {'took':>6} {'in sync':>8} {'rides':>6} {'max to confirmed':>17} "
        f"{'max to email':>13}",
    ]
    for e in report["events"]:
        name = e["event"] + ("" if e["under_load"] else " (no ride after it)")
        lines.append(f"  {name:<44} {e['at'] - started:>6.1f} {s(e.get('took_s')):>6} {s(e.get('in_sync_s')):>8} "
                     f"{e['rides']:>6} {s(e['max_to_confirmed_s']):>17} {s(e['max_to_email_s']):>13}")
    return "\n".join(lines)


def latencies(confirmed: list, outbox: Path) -> list[tuple[float, float, float | None]]:
    """(requested_at, confirmed_at, the .eml file's mtime or None) of each confirmed ride, epoch seconds."""
    rides = []
    for record in confirmed:
        ride = RideConfirmed.model_validate_json(record.value)
        try:
            emailed: float | None = (outbox / f"{ride.ride_id}.eml").stat().st_mtime
        except FileNotFoundError:
            emailed = None
        rides.append((ride.requested_at.timestamp(), ride.confirmed_at.timestamp(), emailed))
    return rides


def wait_moving(count: Callable[[], int], target: int, what: str, alive: Callable[[], bool],
                detail: Callable[[], str] = str, stalled: float = STALLED) -> None:
    """Wait until count() reaches target; fail once it has not grown for `stalled` s (a backlog that shrinks is
    slow, not stuck), with detail() (read then) in the message."""
    best, since = -1, time.monotonic()
    while (n := count()) < target:
        alive()
        if n > best:
            best, since = n, time.monotonic()
        assert time.monotonic() - since < stalled, \
            f"{what}: {n} of {target}, and no progress for {stalled:.0f} s{detail()}"
        time.sleep(0.5)


# ------------------------------------------------------------------------------------------ the test


def test_leader_kill_and_rolling_restart_lose_nothing_and_duplicate_nothing(local_cluster, tmp_path, capsys):
    cluster = local_cluster
    bootstrap = cluster.bootstrap_servers
    seed = random.randrange(1 << 30)
    prefix = unique_prefix("failover")
    report_path = tmp_path / "failover-stalls.json"
    where = f"(seed {seed}; stalls in {report_path}; logs in {tmp_path})"
    print(f"failover seed={seed} rate={RATE}/s bootstrap={bootstrap} {where}", flush=True)

    pipeline = Pipeline(bootstrap, prefix, "exactly-once", tmp_path)
    flow = Flow(bootstrap, prefix, seed, tmp_path)
    events: list[dict] = []
    started = time.time()

    def event(name: str, action: Callable[[], object]) -> dict:
        at, began = time.time(), time.monotonic()
        action()
        events.append({"event": name, "at": at, "took_s": time.monotonic() - began})
        print(f"failover: {name} at +{at - started:.1f} s, took {events[-1]['took_s']:.1f} s", flush=True)
        return events[-1]

    def tail(name: str) -> Callable[[], str]:
        return lambda: f"; the last lines of {name}.py's log:\n{pipeline.scripts[name].log()[-3000:]}"

    try:
        # Every consumer owns its partitions (transaction.py has also read its decided rides back) before the
        # first ride: no group forming in the flow.
        ready = {"transaction": "restored ", "email": f"partitions assigned: {re.escape(prefix)}",
                 "analysis": f"partitions assigned: {re.escape(prefix)}"}
        for name, pattern in ready.items():
            pipeline.scripts[name].wait_for_log(pattern, timeout=180)
        started = time.time()
        flow.start()
        # The baseline starts once rides come out at the far end: the first transaction is slow on a busy machine.
        wait_until(lambda: pipeline.alive() and len(pipeline.emailed()) >= RATE, timeout=120,
                   what=f"the first {RATE} rides emailed {where}")
        flowing = time.time()
        hold(BASELINE, pipeline.alive)

        # The leader of ride_details[0] crashes; ten seconds later it is started again and catches up.
        victim = leader_of(cluster, prefix + topics.RIDE_DETAILS, 0)
        event(f"SIGKILL node {victim} (leader of ride_details[0])", lambda: cluster.kill_node(victim))
        hold(DOWN, pipeline.alive)
        back = event(f"start node {victim} again", lambda: cluster.start_node(victim))
        back["in_sync_s"] = wait_in_sync(cluster, pipeline.alive)

        # A rolling restart: each node stopped cleanly (it hands its leaderships over first) and started again,
        # the next one only once every partition has its three in-sync replicas back.
        for node in cluster.node_ids:
            event(f"rolling: stop node {node} (SIGTERM)", lambda node=node: cluster.stop_node(node))
            back = event(f"rolling: start node {node}", lambda node=node: cluster.start_node(node))
            back["in_sync_s"] = wait_in_sync(cluster, pipeline.alive)
        assert not cluster.dead_nodes(), f"a node died on its own: {cluster.dead_nodes()} {where}"
        hold(TAIL, pipeline.alive)

        # The pipeline kept going: every rides.py run had each of its rides acknowledged, within a generous bound.
        produced = flow.finish(timeout=2 * max(FIRST, MORE) + 120)
        print(f"failover: rides.py {produced}", flush=True)

        requests = Counter(keys(read_all(bootstrap, prefix + topics.RIDE_DETAILS)))
        requested = set(requests)
        assert len(requested) >= produced["acknowledged"], f"{len(requested)} rides in ride_details {where}"

        def decided() -> int:
            return len(requested & set(keys(read_all(bootstrap, prefix + topics.RIDE_CONFIRMED, quiet=1.0))
                                       + keys(read_all(bootstrap, prefix + topics.RIDE_REJECTED, quiet=1.0))))

        wait_moving(decided, len(requested), f"rides decided {where}", pipeline.alive, tail("transaction"))
        confirmed_records = read_all(bootstrap, prefix + topics.RIDE_CONFIRMED)
        confirmed = Counter(keys(confirmed_records))
        rejected = Counter(keys(read_all(bootstrap, prefix + topics.RIDE_REJECTED)))
        wait_moving(lambda: len(pipeline.emailed() & set(confirmed)), len(confirmed),
                    f"confirmed riders emailed {where}", pipeline.alive, tail("email"))
        wait_moving(pipeline.analysed, sum(confirmed.values()), f"rides analysed {where}", pipeline.alive,
                    tail("analysis"))
        time.sleep(3)  # let a late duplicate, if there were one, reach the consumers before we count
        pipeline.stop_all()  # SIGTERM: each exits 0 within 10 s
    finally:
        flow.kill()
        pipeline.kill_all()
        report_path.write_text(json.dumps({"seed": seed, "events": events}, indent=2) + "\n")  # the full one below

    report = stalls(events, latencies(confirmed_records, pipeline.outbox), since=flowing)
    report.update(seed=seed, rate=RATE, rides=produced, started=started)
    report_path.write_text(json.dumps(report, indent=2) + "\n")

    outcome = Outcome(requested, confirmed, rejected, pipeline)
    with capsys.disabled():
        print(f"\nfailover: rides={len(requested)} requests={sum(requests.values())} "
              f"acknowledged={produced['acknowledged']} by {produced['runs']} rides.py run(s) {outcome.counts()} "
              f"seed={seed}")
        print(table(report, started))
        print(f"(JSON: {report_path})")

    outcome.check(where)
    assert outcome.duplicated == 0, f"{outcome.duplicates()} {where}"
