"""`bench/pipeline.py --quick --json` against the session's broker: every figure, ratio and latency row of the
table is there, and they reconcile with each other (not the numbers themselves: a shared CI machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "pipeline.py"

RAW = ["raw kafka-python producer", "raw kafka-python consumer", "raw json consumer", "raw at-least-once loop",
       "raw transactional loop", "raw file-writing loop", "broker limit (Java producer)"]
# Each script figure and the raw loop that does its I/O: the ratios the goals name.
SCRIPTS = {"rides.py": "raw kafka-python producer", "transaction.py at-least-once": "raw at-least-once loop",
           "transaction.py exactly-once": "raw transactional loop", "email.py (outbox)": "raw file-writing loop",
           "analysis.py": "raw json consumer"}


@pytest.fixture(scope="module")
def quick_report(kafka_bootstrap, tmp_path_factory) -> dict:
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", "--bootstrap-servers", kafka_bootstrap],
                            capture_output=True, text=True, timeout=240, cwd=tmp_path_factory.mktemp("bench"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def test_quick_has_every_figure_with_a_rate(quick_report):
    figures = {f["name"]: f for f in quick_report["figures"]}
    for name in RAW + list(SCRIPTS):
        assert figures[name]["records_per_s"] > 0, name
    for name in SCRIPTS:  # each script's peak RSS, read while it caught up
        assert 10 < figures[name]["peak_rss_mb"] < 2000, name
    assert quick_report["rides"] == 3000


def test_quick_ratios_are_the_figures_quotients(quick_report):
    rate = {f["name"]: f["records_per_s"] for f in quick_report["figures"]}
    ratios = quick_report["ratios"]
    for script, raw in SCRIPTS.items():
        assert ratios[f"{script} / {raw}"] == pytest.approx(rate[script] / rate[raw])
    assert ratios["exactly-once / at-least-once (the price of exactly-once)"] == pytest.approx(
        rate["transaction.py exactly-once"] / rate["transaction.py at-least-once"])
    assert ratios["raw kafka-python producer / broker limit (Java producer)"] == pytest.approx(
        rate["raw kafka-python producer"] / rate["broker limit (Java producer)"])


def test_quick_counts_reconcile(quick_report):
    checks = quick_report["checks"]
    for script in SCRIPTS:
        if script != "rides.py":  # rides.py's own count is checked on its summary line (or the bench fails)
            assert any(c.startswith(f"{script}: ") for c in checks), script
    confirmed = int(next(c for c in checks if c.startswith("transaction.py exactly-once: ")).split()[2]
                    .replace(",", ""))
    assert f"email.py (outbox): {confirmed:,} emailed, {confirmed:,} .eml files" in checks
    assert f"analysis.py: {confirmed:,} rides counted" in checks


def test_quick_latency_rows_at_both_rates(quick_report):
    rows = {row["rides_per_s"]: row for row in quick_report["latencies"]}
    assert set(rows) == {100, 500}
    for row in rows.values():
        assert row["rides"] > 0
        for end in ("to_confirmed", "to_email"):
            p = row[end]
            assert 0 < p["p50"] <= p["p95"] <= p["p99"], (row["rides_per_s"], end)
        # An email is written after its ride was confirmed.
        assert row["to_email"]["p50"] >= row["to_confirmed"]["p50"]
