"""`make demo` (tools/demo.py) against the session's broker: rides flow through all four scripts, the summary
reconciles, and nothing the demo started is left running."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tools.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "tools" / "demo.py"
SCRIPTS = ("rides", "transaction", "email", "analysis")


def run_demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIDES_")}
    return subprocess.run([sys.executable, str(DEMO), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain `text` (the demo's unique topic prefix)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_demo_runs_rides_through_all_four_scripts_reconciles_and_leaves_nothing_running(kafka_bootstrap):
    result = run_demo("--bootstrap-servers", kafka_bootstrap, "--rides", "60", "--rate", "30")
    out = result.stdout
    run_dir = None
    try:
        assert result.returncode == 0, f"demo exited {result.returncode}\n{out[-6000:]}\n{result.stderr[-3000:]}"

        prefix = re.search(r"prefixed '(demo-[0-9a-f]+\.)'", out).group(1)
        run_dir = Path(re.search(r"outbox (\S+)/outbox", out).group(1))

        for script in SCRIPTS:
            assert re.search(rf"^\[{script}\] +\S", out, re.MULTILINE), f"no line from {script}.py\n{out[-4000:]}"
        # Started nothing but the scripts: the broker given was used as is.
        assert "using the broker at" in out and "starting Kafka" not in out

        numbers = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", re.search(r"^\[demo\] +summary: (.*)$", out,
                                                                               re.MULTILINE).group(1))}
        assert numbers["requested"] >= numbers["acknowledged"] == 60
        assert numbers["via_api"] == 5  # requested over HTTP through api.py, one of them twice: one ride
        assert numbers["confirmed"] + numbers["rejected"] == 60 + 5
        assert re.search(r"^\[demo\] +the live page: http://127\.0\.0\.1:\d+/ ", out, re.MULTILINE), out[-4000:]
        assert len(re.findall(r"^\[demo\] +GET /rides/\S+: 200 (confirmed|rejected) ", out, re.MULTILINE)) == 5
        assert numbers["emailed"] == numbers["analysed"] == numbers["confirmed"] > 0

        # Metrics on: each consumer's URL on loopback, healthy while it ran.
        for script in ("transaction", "email", "analysis"):
            assert re.search(rf"^\[demo\] +{script}\.py: metrics at http://127\.0\.0\.1:\d+/metrics, health 200 ok",
                             out, re.MULTILINE), f"no metrics line for {script}.py\n{out[-4000:]}"

        # The outbox is kept, one .eml per confirmed ride.
        assert len(list((run_dir / "outbox").glob("*.eml"))) == numbers["confirmed"]

        # Every script it started has exited (and was reaped), and nothing else runs with its topics.
        pids = [int(p) for p in re.findall(r"started \w+\.py, pid (\d+)", out)]
        assert len(pids) == 5
        assert not [pid for pid in pids if Path(f"/proc/{pid}").exists() and prefix in
                    (Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))]
        assert processes_mentioning(prefix) == []
    finally:
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)


def test_demo_with_no_broker_at_the_given_address_says_so_in_one_line_and_starts_nothing():
    result = run_demo("--bootstrap-servers", f"127.0.0.1:{free_port()}", timeout=60)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("demo: error: no Kafka answers at"), result.stderr
    # No broker, no scripts, no run folder.
    assert "started" not in result.stdout and "starting Kafka" not in result.stdout
    assert "outbox" not in result.stdout
