"""`bench/scale_out.py --quick --json` on a three-node cluster of its own: one and two transaction.py instances in
one group each decide every ride once (the bench reconciles, and fails otherwise), both share the six partitions
before the clock starts, and the CPU figures account for the window. Not the speed: a shared CI machine says
nothing about it (`make bench-scale` gives the figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.failover, pytest.mark.timeout(600)]  # three nodes of its own: `make failover`

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scale_out.py"


def test_quick_one_and_two_instances_decide_every_ride_once_and_account_for_the_cpu(launcher_available, tmp_path):
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--instances", "1,2", "--json"],
                            capture_output=True, text=True, timeout=540, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["nodes"] == 3 and report["guarantee"] == "exactly-once"
    assert [step["instances"] for step in report["steps"]] == [1, 2]
    for step in report["steps"]:
        assert step["rides"] == 3000 and step["outcome"].endswith("= 3,000, each ride once"), step
        assert step["rate"] > 0 and step["window_s"] > 0 and step["before_window"] <= 1500
        cores = step["cores"]
        # Each part used some CPU; together they are the machine's busy time, none above what it has.
        assert cores["transaction.py"] > 0 and cores["brokers"] > 0
        assert cores["transaction.py"] + cores["brokers"] + cores["other"] == pytest.approx(
            max(cores["machine"], cores["transaction.py"] + cores["brokers"]), rel=1e-6)
        assert cores["machine"] <= report["cpus"] * 1.05
