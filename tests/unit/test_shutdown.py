"""common.shutdown: signals only set a flag, and a stop that hangs (Kafka unreachable) has a deadline."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A script whose final commit never returns, as commit_transaction() does while the broker is down.
HANGING_STOP = """
import logging, os, signal, sys, time
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
from common.shutdown import Shutdown
shutdown = Shutdown.on_signals(deadline=1.0)
print("ready", flush=True)
while not shutdown.requested:
    time.sleep(0.01)
print("stopping: final commit", flush=True)
time.sleep(60)  # the commit that never returns
print("unreachable", flush=True)
"""


def start(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_stop_that_hangs_ends_at_the_deadline_with_one_line_and_status_1():
    proc = start(HANGING_STOP)
    try:
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert 1.0 <= elapsed < 5, elapsed
    assert "stopping: final commit" in out and "unreachable" not in out
    errors = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "exiting without the final commit" in errors[0], err
    assert "Traceback" not in err


def test_a_stop_that_finishes_in_time_exits_normally():
    proc = start(HANGING_STOP.replace("time.sleep(60)", "time.sleep(0.1)").replace('print("unreachable"',
                                                                                  'print("done"'))
    try:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "done" in out and "exiting without" not in err


def test_a_second_signal_exits_at_once():
    proc = start(HANGING_STOP.replace("deadline=1.0", "deadline=30.0"))
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "stopping: final commit"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT
