"""`bench/api_bench.py --quick --json` against the session's broker: every figure of the table is there, the
load generator's answers reconcile with ride_details and with api.py's own count (the bench fails otherwise), and
the figures agree with each other. Not the speed: a shared CI machine says nothing about it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "api_bench.py"


@pytest.fixture(scope="module")
def quick_report(kafka_bootstrap, tmp_path_factory) -> dict:
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", "--bootstrap-servers", kafka_bootstrap],
                            capture_output=True, text=True, timeout=180, cwd=tmp_path_factory.mktemp("bench-api"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def test_quick_has_every_figure(quick_report):
    figures = [row["figure"] for row in quick_report["table"]]
    for start in ("POST /rides at saturation", "POST /rides at 500/s", "POST /rides at 1,000/s",
                  "rides.py produce rate", "every 202 in ride_details once"):
        assert any(f.startswith(start) for f in figures), (start, figures)
    runs = {run["mode"] if run["mode"] == "closed" else run["rate"]: run for run in quick_report["runs"]}
    assert set(runs) == {"closed", 500, 1000}
    for run in runs.values():
        assert run["accepted"] > 0 and run["accepted_per_s"] > 0 and run["errors"] == {}
        p = run["latency_ms"]
        assert 0 < p["p50"] <= p["p95"] <= p["p99"] <= p["max"]
        assert run["cpu_cores"]["api.py"] > 0 and run["cpu_cores"]["load generator"] > 0
    for rate in (500, 1000):  # open loop: every request that fell due was sent and answered
        assert runs[rate]["requests"] == runs[rate]["accepted"] == int(rate * 2.0)
    assert quick_report["rides_py"] > 0 and quick_report["rides_py_count"] == 3000


def test_quick_reconciles(quick_report):
    checks = quick_report["checks"]
    assert len(checks) == 3 and all("each in ride_details once, nothing else" in c for c in checks)
    answered = sum(run["answered"] for run in quick_report["runs"])
    # Each run's warm-up (100 rides) and its timed requests, every one answered 202.
    assert answered == sum(run["accepted"] + 100 for run in quick_report["runs"])
    last = quick_report["table"][-1]
    assert (last["value"], last["met"]) == (f"{answered:,} rides", "yes")
