"""The report of bench/pipeline.py, pure (no broker, no subprocess): the figures' names and which raw loop each
script figure is compared with (BASELINES), rates, ratios and percentiles, the Report that holds them, and the
two ways it is printed: format_table (people) and to_json (machines).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field


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


Runs = dict[tuple[str, str], list[tuple[float, float | None]]]  # {(figure, side): [(rate, peak RSS MB)]}


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


def order_figures(raw_figures: list[Figure], runs: Runs, record_bytes: float) -> list[Figure]:
    """Each script figure (and its twin at baseline) right under the raw figure it is compared with."""
    raw = {f.name: f for f in raw_figures}
    shown = [raw.pop(RAW_PRODUCER), *script_figures(runs, [RIDES], record_bytes)]
    for name, baseline in BASELINES.items():
        if name != RIDES and baseline in raw:
            shown += [raw.pop(baseline), *script_figures(runs, [name], record_bytes)]
    return shown + list(raw.values())


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
