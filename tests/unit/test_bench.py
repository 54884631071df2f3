"""bench/pipeline.py's pure side: rates, ratios and the table, without a broker."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

# bench/ is a folder of scripts, not a package: load the script by path.
_PATH = Path(__file__).resolve().parents[2] / "bench" / "pipeline.py"
_spec = importlib.util.spec_from_file_location("bench_pipeline", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)


def test_rate():
    assert bench.rate(10_000, 2.0) == 5000
    assert bench.rate(10, 0) == 0  # nothing timed is no rate, not a ZeroDivisionError


def test_rate_between_leaves_out_what_was_done_before_the_clock_started():
    # 500 records arrived with the first sample: only the 19,500 after it count, over 3 s.
    assert bench.rate_between((10.0, 500), (13.0, 20_000)) == pytest.approx(6500)


def test_ratio():
    assert bench.ratio(4000, 5000) == pytest.approx(0.8)
    assert bench.ratio(None, 5000) is None
    assert bench.ratio(4000, 0) is None


def test_megabytes_per_s():
    assert bench.megabytes_per_s(10_000, 375) == pytest.approx(3.75)


def report() -> "bench.Report":
    r = bench.Report(rides=20_000, record_bytes=375.4, machine={
        "cores": "2", "platform": "Linux x86_64", "python": "3.11.7", "kafka_python": "3.0.12",
        "kafka": "4.3.1", "crc32c": "pure Python", "load_before": "1.00", "load_after": "2.00"})
    timed_alike = "first committed batch to all N committed"
    r.figures = [
        bench.Figure(bench.RAW_PRODUCER, 12_000, 4.5, "async send + one flush"),
        bench.Figure(bench.RIDES, 9_000, 3.4, "its summary line"),
        bench.Figure(bench.RAW_CONSUMER, 27_000, 10.1, "first poll to N-th record"),
        bench.Figure(bench.TX_ALO, 5_000, None, timed_alike),
        bench.Figure(bench.TX_EOS, 4_000, None, timed_alike),
    ]
    r.ratios = bench.compute_ratios(r)
    r.checks = ["exactly-once: 19,591 confirmed + 409 rejected = 20,000, each ride once"]
    r.wall_seconds = 61.2
    return r


def test_ratios():
    ratios = dict(report().ratios)
    assert ratios["rides.py / raw producer"] == pytest.approx(0.75)
    assert ratios["transaction.py at-least-once / raw consumer"] == pytest.approx(5 / 27)
    assert ratios["transaction.py exactly-once / raw consumer"] == pytest.approx(4 / 27)
    assert ratios["exactly-once / at-least-once (the price of exactly-once)"] == pytest.approx(0.8)


def test_a_baseline_adds_its_figure_and_the_ratio_of_now_to_it_and_nothing_without_one():
    r = report()
    assert "exactly-once now / at baseline" not in dict(r.ratios)
    r.figures.append(bench.Figure(bench.TX_BASELINE, 5_000, None, "transaction.py as of git abc123"))
    assert dict(bench.compute_ratios(r))["exactly-once now / at baseline"] == pytest.approx(0.8)


def test_ratio_of_a_missing_figure_is_shown_as_na():
    r = report()
    r.figures = [f for f in r.figures if f.name != bench.TX_EOS]
    r.ratios = bench.compute_ratios(r)
    assert re.search(r"exactly-once / at-least-once \(the price of exactly-once\) +n/a$", bench.format_table(r),
                     re.MULTILINE)


def test_table_is_aligned_and_complete():
    table = bench.format_table(report())
    assert "20,000 rides of 375 B" in table
    assert "2 cores" in table and "kafka-python 3.0.12" in table and "Kafka 4.3.1" in table
    assert "1.00 before, 2.00 after" in table
    assert "CRC32C: pure Python" in table  # the figures depend on it more than on anything else
    rows = [line for line in table.splitlines() if line.startswith(("raw ", "rides.py ", "transaction.py "))]
    assert len(rows) == 5
    # The rates end in one column, whatever the names' lengths.
    rates = ("12,000", "9,000", "27,000", "5,000", "4,000")
    ends = {line.index(rate) + len(rate) for line, rate in zip(rows, rates, strict=True)}
    assert len(ends) == 1
    assert "0.80" in table and "0.75" in table


def test_table_shares_one_footnote_between_figures_timed_alike():
    table = bench.format_table(report())
    assert table.count("first committed batch to all N committed") == 1
    tx_rows = [line for line in table.splitlines() if line.startswith("transaction.py ")]
    assert all(line.endswith("(4)") for line in tx_rows)


def test_json_has_every_figure_and_ratio():
    data = json.loads(bench.to_json(report()))
    assert data["rides"] == 20_000
    assert [f["name"] for f in data["figures"]][0] == bench.RAW_PRODUCER
    assert data["ratios"]["exactly-once / at-least-once (the price of exactly-once)"] == pytest.approx(0.8)
