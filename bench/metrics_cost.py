"""What --metrics-port costs, and what its end-to-end histogram says (issue 10), in one run against one broker:

    .venv/bin/python bench/metrics_cost.py [--rides N] [--bootstrap-servers HOST:PORT] [--quick]

1. transaction.py (exactly-once) over N pre-produced rides with metrics off and on, run off, on, on, off twice
   (a drift of the machine favours neither side), timed as bench/pipeline.py times it (first committed batch to
   the N-th); the ratio on / off (goal: at least 0.95).
2. The scrape of /metrics: transaction.py, email.py and analysis.py caught up on 6 partitions each, GET /metrics
   200 times per script: its size, and p50 / p99 of the time to answer.
3. Request-to-email latency at 100 and 500 rides/s from email.py's rides_end_to_end_seconds{stage="emailed"}
   histogram (p50 and p99 as Prometheus' histogram_quantile reads them: interpolated within a bucket), next to
   the same rides' exact figures from their .eml files' mtimes (bench/latency.py's way), and the exact figures of
   a run with metrics off just before it (transaction.py, email.py and analysis.py running in both).

Loopback only, bounded: every run has a count, every wait a timeout; everything started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # the project, after the stdlib (email.py)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import wait_for  # noqa: E402
from raw_figures import raw_produce, ride_records  # noqa: E402
from report import percentiles  # noqa: E402
from runs import (  # noqa: E402
    PROJECT_ROOT,
    STALL_TIMEOUT,
    BenchError,
    Run,
    admin,
    committed_total,
    create_input_topic,
    last_line,
    progress,
    read_records,
    run_consumer,
)

SCRAPES = 200
RUN_ORDER = ("off", "on", "on", "off", "off", "on", "on", "off")
LATENCY_RATES = (100, 500)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets ending with +Inf: linear
    interpolation inside the bucket the rank falls in (its lower bound 0 for the first); None without samples."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # as Prometheus does: the highest finite bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-12)
        lower_bound, lower_count = bound, count
    return lower_bound


def scrape_text(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return response.read().decode()


def emailed_buckets(text: str) -> list[tuple[float, float]]:
    """email.py's end-to-end buckets (stage "emailed") out of a /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(float(s.labels["le"]), s.value) for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "rides_end_to_end_seconds_bucket" and s.labels.get("stage") == "emailed"]


def metrics_url(script: Run, timeout: float = STALL_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in script.log().splitlines():
            if "metrics on http://" in line:
                return line.split("metrics on ", 1)[1].split("/metrics", 1)[0]
        if not script.running:
            raise BenchError(f"{script.name} exited: {last_line(script.log())}")
        time.sleep(0.1)
    raise BenchError(f"{script.name} logged no metrics URL within {timeout:.0f} s")


def cost_of_metrics(bootstrap: str, records: list, work_dir: Path, procs: list) -> dict:
    """transaction.py off, on, on, off, off, on, on, off over the same rides: each side's mean rate and on / off.
    Two runs of one side differ by up to a fifth here: four of each, and a drift of the machine favours neither."""
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for i, side in enumerate(RUN_ORDER):
        prefix = f"metrics-{int(time.time())}-{i}-{side}."
        raw_produce(bootstrap, create_input_topic(bootstrap, prefix), records)  # untimed: the input
        progress(f"transaction.py exactly-once, metrics {side}, over {len(records):,} rides")
        flags = ["--metrics-port", "0"] if side == "on" else []
        rate_, _rss, summary = run_consumer(PROJECT_ROOT, "transaction.py", flags, f"metrics {side}", bootstrap,
                                            prefix, "ride_details", len(records), work_dir, procs)
        if summary.get("confirmed", 0) + summary.get("rejected", 0) != len(records):
            raise BenchError(f"transaction.py (metrics {side}) decided {summary}, expected {len(records)}")
        rates[side].append(rate_)
    off, on = statistics.mean(rates["off"]), statistics.mean(rates["on"])
    return {"off": off, "on": on, "runs": rates, "ratio": on / off}


def pipeline_with_metrics(bootstrap: str, prefix: str, work_dir: Path, procs: list, metrics: bool = True
                          ) -> dict[str, Run]:
    common = ["--bootstrap-servers", bootstrap, "--topic-prefix", prefix, *(["--metrics-port", "0"] if metrics else [])]
    create_input_topic(bootstrap, prefix)
    scripts = {
        "transaction.py": Run(PROJECT_ROOT, "transaction.py", *common, "--group-id", f"{prefix}transaction",
                              log_dir=work_dir),
        "email.py": Run(PROJECT_ROOT, "email.py", *common, "--group-id", f"{prefix}email", "--outbox",
                        str(work_dir / prefix / "outbox"), log_dir=work_dir),
        "analysis.py": Run(PROJECT_ROOT, "analysis.py", *common, "--group-id", f"{prefix}analysis", "--state",
                           str(work_dir / prefix / "analysis.db"), "--every", "3600", log_dir=work_dir),
    }
    procs += scripts.values()
    ready = {"transaction.py": "restored ", "email.py": f"partitions assigned: {prefix}",
             "analysis.py": f"partitions assigned: {prefix}"}
    wait_for(lambda: sum(ready[name] in s.log() for name, s in scripts.items()), len(ready), "consumers ready",
             list(scripts.values()), STALL_TIMEOUT * 2)
    return scripts


def latency_and_scrapes(bootstrap: str, rides_per_s: int, seconds: float, work_dir: Path, procs: list,
                        scrape: bool, metrics: bool = True) -> dict:
    """rides.py --rate R with the three consumers, metrics on (or off); the histogram's and the files' latency,
    and (scrape) the time of GET /metrics once they are caught up."""
    from common import topics

    prefix = f"metrics-{int(time.time())}-latency-{rides_per_s}-{'on' if metrics else 'off'}."
    scripts = pipeline_with_metrics(bootstrap, prefix, work_dir, procs, metrics)
    urls = {name: metrics_url(s) for name, s in scripts.items()} if metrics else {}
    n = int(rides_per_s * seconds)
    rides = Run(PROJECT_ROOT, "rides.py", "--bootstrap-servers", bootstrap, "--topic-prefix", prefix, "--rate",
                str(rides_per_s), "--count", str(n), "--seed", "11", log_dir=work_dir)
    procs.append(rides)
    progress(f"rides.py --rate {rides_per_s} for {seconds:.0f} s; transaction.py, email.py, analysis.py metrics "
             f"{'on' if metrics else 'off'}")
    if rides.wait(timeout=seconds * 3 + STALL_TIMEOUT) != 0:
        raise BenchError(f"rides.py --rate {rides_per_s} failed: {last_line(rides.log())}")
    watcher = admin(bootstrap)
    try:
        wait_for(lambda: committed_total(watcher, f"{prefix}transaction", prefix + topics.RIDE_DETAILS), n,
                 "rides decided", list(scripts.values()))
    finally:
        watcher.close()
    outbox = work_dir / prefix / "outbox"
    confirmed = read_records(bootstrap, [prefix + topics.RIDE_CONFIRMED])
    wait_for(lambda: sum(1 for _ in outbox.glob("*.eml")), len(confirmed), "confirmed rides emailed",
             list(scripts.values()))
    buckets = emailed_buckets(scrape_text(urls["email.py"])) if metrics else []
    if metrics and (not buckets or buckets[-1][1] != len(confirmed)):
        raise BenchError(f"email.py's histogram counts {buckets[-1][1] if buckets else 0} emails, "
                         f"{len(confirmed)} rides were confirmed")
    exact = []
    for r in confirmed:
        value = json.loads(r.value)
        exact.append((outbox / f"{value['ride_id']}.eml").stat().st_mtime
                     - datetime.fromisoformat(value["requested_at"]).timestamp())
    result = {"rides_per_s": rides_per_s, "emails": len(confirmed), "metrics": metrics,
              "histogram_ms": {f"p{int(q * 100)}": 1000 * (histogram_quantile(q, buckets) or 0) for q in (0.5, 0.99)},
              "exact_ms": {k: 1000 * v for k, v in percentiles(exact).items()}}
    if scrape and metrics:
        scrapes: dict[str, dict[str, float]] = {}
        result["scrapes"] = scrapes
        for name, url in urls.items():
            times, size = [], 0
            for _ in range(SCRAPES):
                started = time.perf_counter()
                size = len(scrape_text(url))
                times.append(time.perf_counter() - started)
            scrapes[name] = {"bytes": size, **{k: 1000 * v for k, v in percentiles(times).items()}}
    for s in scripts.values():
        s.stop()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rides", type=int, default=30_000, help="rides per transaction.py run (default 30,000)")
    p.add_argument("--seconds", type=float, default=20.0, help="per latency rate (default 20)")
    p.add_argument("--bootstrap-servers", help="use this cluster instead of starting a broker")
    p.add_argument("--quick", action="store_true", help="3,000 rides and 3 s latency runs: checks it runs")
    args = p.parse_args()
    n, seconds = (3000, 3.0) if args.quick else (args.rides, args.seconds)
    from tools.broker import LocalBroker

    procs: list[Run] = []
    broker = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
            work_dir = Path(tmp)
            try:
                bootstrap = args.bootstrap_servers
                if not bootstrap:
                    progress("starting a local Kafka broker")
                    broker = LocalBroker(data_dir=work_dir / "kafka")
                    bootstrap = broker.start(port=0, fresh=True)
                records = ride_records(n, seed=7)
                warm = create_input_topic(bootstrap, f"metrics-{int(time.time())}-warm.")
                raw_produce(bootstrap, warm, records[: n // 4])  # the broker's JIT, before any figure
                cost = cost_of_metrics(bootstrap, records, work_dir, procs)
                latency = [latency_and_scrapes(bootstrap, r, seconds, work_dir, procs, scrape=(r == LATENCY_RATES[0]),
                                               metrics=on) for r in LATENCY_RATES for on in (False, True)]
            finally:
                for proc in procs:
                    proc.kill()
                if broker is not None:
                    broker.stop()
    except (BenchError, OSError) as e:
        print(f"bench/metrics_cost.py: {e}", file=sys.stderr)
        return 1
    print(format_report(n, cost, latency))
    return 0


def format_report(n: int, cost: dict, latency: list[dict]) -> str:
    runs = lambda side: " / ".join(f"{r:,.0f}" for r in cost["runs"][side])  # noqa: E731
    lines = [f"The cost of --metrics-port: transaction.py (exactly-once) over {n:,} rides, runs {', '.join(RUN_ORDER)}",
             f"  metrics off  {cost['off']:>8,.0f} rides/s   (runs {runs('off')})",
             f"  metrics on   {cost['on']:>8,.0f} rides/s   (runs {runs('on')})",
             f"  on / off     {cost['ratio']:>8.2f}           (goal: at least 0.95)", ""]
    scrapes: dict[str, dict[str, float]] = next((r["scrapes"] for r in latency if "scrapes" in r), {})
    if scrapes:
        lines.append(f"GET /metrics, {SCRAPES} times each, caught up on 6 partitions:")
        for name, s in scrapes.items():
            lines.append(f"  {name:15} {s['bytes']:>7,.0f} B   p50 {s['p50']:.1f} ms   p99 {s['p99']:.1f} ms")
        lines.append("")
    lines.append("Request-to-email latency, ms: email.py's rides_end_to_end_seconds{stage=\"emailed\"} "
                 "(histogram_quantile) next to the exact figure (.eml mtimes)")
    lines.append("  rides/s  metrics  emails   histogram p50 / p99   exact p50 / p99")
    for r in latency:
        h, x = r["histogram_ms"], r["exact_ms"]
        shown = f"{h['p50']:>9.0f} / {h['p99']:<7.0f}" if r["metrics"] else f"{'-':>9} / {'-':<7}"
        lines.append(f"  {r['rides_per_s']:>7}  {'on' if r['metrics'] else 'off':>7}  {r['emails']:>6}   {shown}   "
                     f"{x['p50']:>5.0f} / {x['p99']:.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
