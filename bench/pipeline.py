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
  into a temporary worktree, whose scripts run with that tree on PYTHONPATH (they import its
  common/): over the same input, on the same broker, in the same run, timed the same way, each figure now,
  baseline, baseline, now (see run_order), and a ratio "now / at baseline" for each. A figure REV's
  scripts cannot take is "-". The raw figures are this bench's own code: the same at any revision.
Where things are: this file parses the arguments, checks out --baseline and says what runs in what order
(bench, main); report.py holds the figures, ratios, table and JSON (pure); runs.py runs the scripts, watches
them catch up and reconciles their outputs; raw_figures.py makes the input and takes the raw figures
(bench/raw.py's loops, bench/broker_limit.py); latency.py takes the latency runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# `python bench/pipeline.py` puts bench/ on the path, not the project. Appended, not prepended: the
# project's email.py must not shadow the standard library's `email` package in this process.
sys.path.append(str(Path(__file__).resolve().parent.parent))
# bench/'s modules (report, runs, raw_figures, latency, raw, broker_limit), also when loaded by path (tests)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import run_latency  # noqa: E402
from raw_figures import (  # noqa: E402
    broker_limit,
    confirmed_records,
    raw_consume,
    raw_loops,
    raw_produce,
    ride_records,
)
from report import (  # noqa: E402
    BASELINE,
    EMAIL,
    NOW,
    RAW_CONSUMER,
    RAW_PRODUCER,
    RIDES,
    SCRIPT_FIGURES,
    TX_ALO,
    TX_EOS,
    Figure,
    Report,
    Runs,
    compute_ratios,
    format_table,
    megabytes_per_s,
    order_figures,
    rate,
    to_json,
)
from runs import (  # noqa: E402
    PROJECT_ROOT,
    BenchError,
    create_input_topic,
    last_line,
    on_a_broker,
    progress,
    reconcile,
    reconcile_analysis,
    reconcile_email,
    run_consumer,
    run_rides,
)

DEFAULT_RIDES = 50_000  # about a minute on 2 cores, broker start included; runs of seconds, not blips
DEFAULT_SEED = 7
AT_LEAST_ONCE, EXACTLY_ONCE = "at-least-once", "exactly-once"
LATENCY_RATES = (100, 500)  # rides/s: the latency goals are set at these two
LATENCY_SECONDS = 20.0  # per rate: a few thousand rides, enough for a p99
QUICK_RIDES, QUICK_LATENCY_SECONDS = 3000, 3.0
# The Java producer gets at least this many records: at the rides' N it would be timing its own JIT warm-up.
JAVA_RECORDS = 100_000  # --quick: checks the table is produced, not its numbers


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
        raise BenchError(f"--baseline {rev}: {last_line(result.stderr)}")
    return path


def remove_checkout(path: Path) -> None:
    subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "remove", "--force", str(path)],
                   capture_output=True)


def run_order(baseline: bool) -> list[str]:
    """The trees one script figure runs from, in order. With a baseline: now, baseline, baseline, now.
    A drift of the machine that is linear in time (load from others, a warming broker) then adds the same
    to both sides' means, so it favours neither; alternating now/baseline once would hand it to one."""
    return [NOW, BASELINE, BASELINE, NOW] if baseline else [NOW]


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run(bootstrap: str, kafka_version: str, _broker_pids: list[int], work_dir: Path, procs: list) -> Report:
        baseline = resolve_rev(args.baseline) if args.baseline else None
        return bench(bootstrap, kafka_version, args.rides, args.seed, work_dir, procs, baseline,
                     *((QUICK_LATENCY_SECONDS, QUICK_RIDES) if args.quick else ()))

    return on_a_broker(args.bootstrap_servers, "bench-", run, to_json if args.json else format_table)


if __name__ == "__main__":
    sys.exit(main())
