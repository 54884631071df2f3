"""bench/'s pure side, without a broker: rates, ratios and the table (report.py), the order of the runs
(pipeline.py), the latency samples (latency.py), a script's tree (runs.py)."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

# bench/ is a folder of scripts, not a package: load the script by path. It puts bench/ on the path, where its
# modules import each other by name.
_PATH = Path(__file__).resolve().parents[2] / "bench" / "pipeline.py"
_spec = importlib.util.spec_from_file_location("bench_pipeline", _PATH)
assert _spec is not None and _spec.loader is not None
pipeline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pipeline)

import latency  # noqa: E402
import report  # noqa: E402
import runs  # noqa: E402


def test_rate():
    assert report.rate(10_000, 2.0) == 5000
    assert report.rate(10, 0) == 0  # nothing timed is no rate, not a ZeroDivisionError


def test_rate_between_leaves_out_what_was_done_before_the_clock_started():
    # 500 records arrived with the first sample: only the 19,500 after it count, over 3 s.
    assert report.rate_between((10.0, 500), (13.0, 20_000)) == pytest.approx(6500)


def test_ratio():
    assert report.ratio(4000, 5000) == pytest.approx(0.8)
    assert report.ratio(None, 5000) is None
    assert report.ratio(4000, 0) is None


def test_megabytes_per_s():
    assert report.megabytes_per_s(10_000, 375) == pytest.approx(3.75)


def sample_report() -> report.Report:
    r = report.Report(rides=20_000, record_bytes=375.4, machine={
        "cores": "2", "platform": "Linux x86_64", "python": "3.11.7", "kafka_python": "3.0.12",
        "kafka": "4.3.1", "crc32c": "pure Python", "load_before": "1.00", "load_after": "2.00"})
    timed_alike = "first committed batch to all N committed"
    r.figures = [
        report.Figure(report.RAW_PRODUCER, 12_000, 4.5, "async send + one flush"),
        report.Figure(report.RIDES, 9_000, 3.4, "its summary line"),
        report.Figure(report.RAW_CONSUMER, 27_000, 10.1, "first poll to N-th record"),
        report.Figure(report.TX_ALO, 5_000, None, timed_alike),
        report.Figure(report.TX_EOS, 4_000, None, timed_alike),
        report.Figure(report.RAW_ALO, 6_250, None, "flush, then commit"),
        report.Figure(report.RAW_EOS, 5_000, None, "one transaction per batch"),
        report.Figure(report.RAW_FILES, 10_000, None, "one file per record"),
        report.Figure(report.EMAIL, 6_000, None, timed_alike, peak_rss_mb=61.2),
        report.Figure(report.RAW_JSON, 40_000, None, "poll + json.loads"),
        report.Figure(report.ANALYSIS, None, None, timed_alike),
        report.Figure(report.BROKER_LIMIT, 120_000, 45.0, "ProducerPerformance"),
    ]
    r.ratios = report.compute_ratios(r)
    r.checks = ["exactly-once: 19,591 confirmed + 409 rejected = 20,000, each ride once"]
    r.wall_seconds = 61.2
    return r


def test_ratios():
    # Each script over the raw loop that does its I/O (the goals), not over a consumer doing nothing.
    ratios = dict(sample_report().ratios)
    assert ratios["rides.py / raw kafka-python producer"] == pytest.approx(0.75)
    assert ratios["transaction.py at-least-once / raw at-least-once loop"] == pytest.approx(0.8)
    assert ratios["transaction.py exactly-once / raw transactional loop"] == pytest.approx(0.8)
    assert ratios["email.py (outbox) / raw file-writing loop"] == pytest.approx(0.6)
    assert ratios["analysis.py / raw json consumer"] is None  # a figure that could not be taken
    assert ratios["exactly-once / at-least-once (the price of exactly-once)"] == pytest.approx(0.8)
    assert ratios["raw kafka-python producer / broker limit (Java producer)"] == pytest.approx(0.1)


def test_a_figure_that_could_not_be_taken_is_a_dash_and_its_peak_rss_is_shown():
    lines = report.format_table(sample_report()).splitlines()
    assert re.search(r"^analysis\.py +- ", next(line for line in lines if line.startswith("analysis.py")))
    assert "61 MB" in next(line for line in lines if line.startswith("email.py"))


def test_percentiles_by_nearest_rank():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert report.percentiles(values) == {"p50": 50, "p95": 95, "p99": 99}
    assert report.percentiles([7.0]) == {"p50": 7, "p95": 7, "p99": 7}
    assert report.percentiles([3.0, 1.0, 2.0])["p50"] == 2  # unsorted input
    assert report.percentiles([]) == {}


def test_the_latency_rows_show_each_rate_and_its_percentiles():
    r = sample_report()
    r.latencies = [report.Latency(500, 20.0, 9_800, {"p50": 11, "p95": 20, "p99": 35},
                                 {"p50": 185, "p95": 900, "p99": 1750})]
    row = next(line for line in report.format_table(r).splitlines() if line.strip().startswith("500 "))
    assert row.split() == ["500", "9800", "11", "/", "20", "/", "35", "185", "/", "900", "/", "1750"]
    assert json.loads(report.to_json(r))["latencies"][0]["to_email"]["p99"] == 1750


def test_ratio_of_a_missing_figure_is_shown_as_na():
    r = sample_report()
    r.figures = [f for f in r.figures if f.name != report.TX_EOS]
    r.ratios = report.compute_ratios(r)
    assert re.search(r"exactly-once / at-least-once \(the price of exactly-once\) +n/a$", report.format_table(r),
                     re.MULTILINE)


def test_table_is_aligned_and_complete():
    table = report.format_table(sample_report())
    assert "20,000 rides of 375 B" in table
    assert "2 cores" in table and "kafka-python 3.0.12" in table and "Kafka 4.3.1" in table
    assert "1.00 before, 2.00 after" in table
    assert "CRC32C: pure Python" in table  # the figures depend on it more than on anything else
    rows = [line for line in table.splitlines() if line.startswith(("raw kafka", "rides.py ", "transaction.py "))]
    assert len(rows) == 5
    # The rates end in one column, whatever the names' lengths.
    rates = ("12,000", "9,000", "27,000", "5,000", "4,000")
    ends = {line.index(rate) + len(rate) for line, rate in zip(rows, rates, strict=True)}
    assert len(ends) == 1
    assert "0.80" in table and "0.75" in table


def test_table_shares_one_footnote_between_figures_timed_alike():
    table = report.format_table(sample_report())
    assert table.count("first committed batch to all N committed") == 1
    tx_rows = [line for line in table.splitlines() if line.startswith("transaction.py ")]
    assert all(line.endswith("(4)") for line in tx_rows)


def test_json_has_every_figure_and_ratio():
    data = json.loads(report.to_json(sample_report()))
    assert data["rides"] == 20_000
    assert [f["name"] for f in data["figures"]][0] == report.RAW_PRODUCER
    assert data["ratios"]["exactly-once / at-least-once (the price of exactly-once)"] == pytest.approx(0.8)


# ------------------------------------------------------------------------------- --baseline REV


def test_with_a_baseline_each_figure_runs_now_baseline_baseline_now_so_a_drift_favours_neither_side():
    order = pipeline.run_order(baseline=True)
    assert order == [report.NOW, report.BASELINE, report.BASELINE, report.NOW]
    # A drift linear in time adds the same to both sides' means: their mean positions are equal.
    positions = {side: [i for i, s in enumerate(order) if s == side] for side in (report.NOW, report.BASELINE)}
    assert sum(positions[report.NOW]) == sum(positions[report.BASELINE])
    assert pipeline.run_order(baseline=False) == [report.NOW]


def fake_runs(baseline: bool) -> tuple[list[tuple[str, str]], dict]:
    """measure_scripts with a fake run of one figure: the calls it made and what it returned."""
    calls: list[tuple[str, str]] = []
    speed = {report.RIDES: 9_000, report.TX_ALO: 5_000, report.TX_EOS: 4_000, report.EMAIL: 3_000,
             report.ANALYSIS: 8_000}

    def run_one(figure: str, side: str) -> tuple[float, float | None]:
        calls.append((figure, side))
        # now is 0.8 of the baseline; the baseline's two runs differ, so the mean is taken
        n = sum(1 for c in calls if c == (figure, side))
        rss = 50.0 + n
        return (speed[figure] * 0.8, rss) if side == report.NOW else (speed[figure] + (100 if n == 1 else -100), rss)

    return calls, pipeline.measure_scripts(run_one, baseline)


def test_a_baseline_measures_every_script_figure_at_both_revisions_interleaved():
    calls, runs = fake_runs(baseline=True)
    abba = [report.NOW, report.BASELINE, report.BASELINE, report.NOW]
    assert calls == [(f, side) for f in report.SCRIPT_FIGURES for side in abba]
    assert set(report.SCRIPT_FIGURES) == {report.RIDES, report.TX_ALO, report.TX_EOS, report.EMAIL, report.ANALYSIS}
    assert runs[(report.TX_EOS, report.BASELINE)] == [(4_100, 51.0), (3_900, 52.0)]


def test_without_a_baseline_each_script_figure_runs_once_at_now():
    calls, _ = fake_runs(baseline=False)
    assert calls == [(f, report.NOW) for f in report.SCRIPT_FIGURES]


def baseline_report() -> report.Report:
    _, runs = fake_runs(baseline=True)
    r = sample_report()
    r.baseline = "943e8ac"
    raw = [f for f in r.figures if f.name.startswith("raw") or f.name == report.BROKER_LIMIT]
    r.figures = report.order_figures(raw, runs, 375.4)
    r.ratios = report.compute_ratios(r)
    return r


def test_a_baseline_adds_each_script_figure_at_baseline_and_its_now_over_baseline_ratio():
    r = baseline_report()
    names = [f.name for f in r.figures]
    # Each script figure and its twin at baseline right under the raw loop it is compared with.
    assert names == [report.RAW_PRODUCER, report.RIDES, "rides.py at baseline",
                     report.RAW_ALO, report.TX_ALO, "transaction.py at-least-once at baseline",
                     report.RAW_EOS, report.TX_EOS, "transaction.py exactly-once at baseline",
                     report.RAW_FILES, report.EMAIL, "email.py (outbox) at baseline",
                     report.RAW_JSON, report.ANALYSIS, "analysis.py at baseline",
                     report.RAW_CONSUMER, report.BROKER_LIMIT]
    email = next(f for f in r.figures if f.name == report.EMAIL)
    assert email.peak_rss_mb == 52  # the highest of its runs
    assert r.figure("transaction.py exactly-once at baseline") == pytest.approx(4_000)  # mean of 4,100 and 3,900
    ratios = dict(r.ratios)
    for name in report.SCRIPT_FIGURES:
        assert ratios[f"{name} now / at baseline"] == pytest.approx(0.8)
    # The raw kafka-python figures are the same code at both revisions: no baseline of theirs.
    assert not any(n.startswith("raw") and "baseline" in n for n in names + list(ratios))


def test_a_figure_the_baseline_cannot_take_is_a_dash_and_so_is_its_ratio():
    _, runs = fake_runs(baseline=True)
    runs[(report.EMAIL, report.BASELINE)] = []  # both runs at the baseline returned None
    r = sample_report()
    r.baseline = "943e8ac"
    r.figures = report.order_figures([f for f in r.figures if f.name.startswith("raw")], runs, 375.4)
    r.ratios = report.compute_ratios(r)
    table = report.format_table(r)
    assert re.search(r"^email\.py \(outbox\) at baseline +- +\(\d\)$", table, re.MULTILINE)
    assert re.search(r"^  email\.py \(outbox\) now / at baseline +n/a$", table, re.MULTILINE)


def test_no_baseline_no_baseline_figures_or_ratios():
    _, runs = fake_runs(baseline=False)
    figures = report.script_figures(runs, list(report.SCRIPT_FIGURES), 375.4)
    assert [f.name for f in figures] == list(report.SCRIPT_FIGURES)
    r = sample_report()
    assert not [n for n, _ in r.ratios if "baseline" in n]
    assert "baseline" not in report.format_table(r)


def test_the_table_names_the_baseline_and_shows_each_run_and_each_ratio():
    table = report.format_table(baseline_report())
    assert "baseline: git 943e8ac" in table
    eos_base = next(line for line in table.splitlines() if line.startswith("transaction.py exactly-once at baseline"))
    assert "4,000" in eos_base and "4,100 / 3,900" in eos_base  # the mean and the runs it is the mean of
    for name in report.SCRIPT_FIGURES:
        assert re.search(rf"^  {re.escape(name)} now / at baseline +0\.80$", table, re.MULTILINE)


def test_runs_that_reconciled_alike_share_one_check_line():
    r = baseline_report()
    r.checks = ["transaction.py exactly-once: 4,901 confirmed + 99 rejected = 5,000, each ride once"] * 2
    checks = [line for line in report.format_table(r).splitlines() if line.startswith("check:")]
    assert checks == ["check: transaction.py exactly-once: 4,901 confirmed + 99 rejected = 5,000, each ride once "
                      "(each of 2 runs)"]


def test_the_json_has_the_baseline_its_figures_and_ratios():
    data = json.loads(report.to_json(baseline_report()))
    assert data["baseline"] == "943e8ac"
    figures = {f["name"]: f for f in data["figures"]}
    assert figures["rides.py at baseline"]["runs"] == [9_100, 8_900]
    assert data["ratios"]["transaction.py at-least-once now / at baseline"] == pytest.approx(0.8)


def test_a_trees_script_imports_its_own_common_and_never_reads_the_trees_env_file(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    (tree / "common").mkdir(parents=True)
    (tree / "common" / "__init__.py").write_text("")
    # A user's .env for a secured cluster: the bench's scripts must not read it (their broker is the bench's).
    (tree / ".env").write_text("RIDES_SECURITY_PROTOCOL=SASL_SSL\n")
    (tree / "probe.py").write_text("import os, common\nprint('cwd', os.getcwd())\nprint('common', common.__file__)\n"
                                   "print('env file here', os.path.exists('.env'))\n"
                                   "print('smtp', os.environ.get('SMTP_HOST'))\n")
    # Whatever this process was started with (the project on PYTHONPATH, say), the tree's own common/ wins.
    monkeypatch.setenv("PYTHONPATH", str(runs.PROJECT_ROOT))
    monkeypatch.setenv("SMTP_HOST", "smtp.example.net")
    monkeypatch.chdir(tree)
    logs = tmp_path / "logs"
    logs.mkdir()
    run = runs.Run(tree, "probe.py", log_dir=logs)
    assert run.wait(timeout=30) == 0
    assert f"cwd {logs}" in run.log() and "env file here False" in run.log() and "smtp None" in run.log()
    assert f"common {tree / 'common' / '__init__.py'}" in run.log()


def test_a_baseline_that_is_no_commit_is_refused_in_one_line_before_anything_runs():
    with pytest.raises(runs.BenchError, match=r"^--baseline no-such-rev: not a commit of this repository$"):
        pipeline.resolve_rev("no-such-rev")
    assert pipeline.main(["--rides", "1000", "--baseline", "no-such-rev", "--bootstrap-servers", "127.0.0.1:1"]) == 1


def test_a_baseline_is_shown_as_its_short_hash():
    head = pipeline.resolve_rev("HEAD")
    assert re.fullmatch(r"[0-9a-f]{7,}", head)
    assert pipeline.resolve_rev(head) == head


def test_the_broker_limit_is_producer_performances_total_not_a_window():
    import broker_limit  # bench/, put on the path by bench/pipeline.py

    output = ("52691 records sent, 10538.2 records/sec (4.06 MB/sec), 2472.5 ms avg latency, 3219.0 ms max.\n"
              "100000 records sent, 14587.892050 records/sec (5.62 MB/sec), 3011.88 ms avg latency, ...\n")
    assert broker_limit.parse_rate(output) == pytest.approx(14587.89205)
    with pytest.raises(broker_limit.LimitError, match="no summary line"):
        broker_limit.parse_rate("Exception in thread main\n")


def test_latency_runs_from_requested_at_to_the_confirmed_records_timestamp_and_to_the_emails_mtime():
    from datetime import datetime, timezone

    at = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    requested = {"a": at, "b": at}
    confirmed = [("a", int(at.timestamp() * 1000) + 12), ("b", int(at.timestamp() * 1000) + 30)]
    to_confirmed, to_email = latency.latency_samples(confirmed, {"a": at.timestamp() + 0.05, "b": None}, requested)
    assert to_confirmed == pytest.approx([12, 30])
    assert to_email == pytest.approx([50])  # "b" has no email (yet): no sample, the caller counts them


def test_histogram_quantile_interpolates_inside_the_bucket_as_prometheus_does():
    import metrics_cost  # bench/ is on the path (above)

    buckets = [(0.1, 50.0), (0.5, 90.0), (float("inf"), 100.0)]  # cumulative, as /metrics shows them
    assert metrics_cost.histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert metrics_cost.histogram_quantile(0.7, buckets) == pytest.approx(0.3)
    assert metrics_cost.histogram_quantile(0.25, buckets) == pytest.approx(0.05)
    # In the +Inf bucket: the highest finite bound, never infinity.
    assert metrics_cost.histogram_quantile(0.99, buckets) == pytest.approx(0.5)
    assert metrics_cost.histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
