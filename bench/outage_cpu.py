"""CPU the scripts burn while Kafka is down: rides.py and transaction.py through a 30 s broker outage.

    .venv/bin/python bench/outage_cpu.py [--outage SECONDS] [--rate R]

Starts its own broker (tools.broker.LocalBroker, a temporary folder, a free port), then rides.py
--rate 50 and transaction.py against it, waits until rides are confirmed, stops the broker, and reads
each script's CPU seconds (user + system, all threads) from /proc/<pid>/stat at the start and the end of
the outage. Then it starts the broker again on the same port and data, checks that rides are produced
and confirmed again, stops the scripts with SIGTERM and the broker, and prints one line per script.
Linux only (/proc). Progress goes to stderr, the figures to stdout; a failure is one line and exit 1.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Appended, not prepended: the project's email.py must not shadow the standard library's `email`.
sys.path.append(str(PROJECT_ROOT))

from kafka import KafkaConsumer, TopicPartition  # noqa: E402

from tools.broker import LocalBroker  # noqa: E402

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from runs import cpu_seconds  # noqa: E402

SCRIPTS = ("rides.py", "transaction.py")


def end_offsets(bootstrap: str, topic: str) -> int:
    """How many records a topic holds (read_committed: what transaction.py has committed)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                             client_id="bench-outage-cpu")
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        return sum(consumer.end_offsets([TopicPartition(topic, p) for p in partitions]).values())
    finally:
        consumer.close()


def wait_for(what: str, predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not true after {timeout:.0f} s")
        time.sleep(0.5)


def grows(bootstrap: str, topic: str, beyond: int):
    def check() -> bool:
        try:
            return end_offsets(bootstrap, topic) > beyond
        except Exception:  # the broker is not answering yet
            return False
    return check


def measure(outage: float, rate: float, workdir: Path) -> dict[str, float]:
    broker = LocalBroker(data_dir=workdir / "kafka")
    procs: dict[str, subprocess.Popen] = {}
    try:
        bootstrap = broker.start(port=0)
        prefix = f"bench-outage-{uuid.uuid4().hex[:8]}."
        details, confirmed = prefix + "ride_details", prefix + "ride_confirmed"
        for script in SCRIPTS:
            args = [sys.executable, script, "--bootstrap-servers", bootstrap, "--topic-prefix", prefix]
            if script == "rides.py":
                args += ["--rate", f"{rate:g}"]
            with open(workdir / f"{script}.log", "ab") as log:
                procs[script] = subprocess.Popen(args, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL,
                                                 stdout=log, stderr=log)
        print(f"broker at {bootstrap}; rides.py --rate {rate:g} and transaction.py started; logs in {workdir}",
              file=sys.stderr)
        wait_for("transaction.py confirming rides", grows(bootstrap, confirmed, 0))

        broker.stop()
        before = {name: cpu_seconds(p.pid) for name, p in procs.items()}
        started = time.monotonic()
        print(f"broker stopped; measuring for {outage:g} s", file=sys.stderr)
        time.sleep(outage)  # the measured window itself, not a wait for a condition
        elapsed = time.monotonic() - started
        after = {name: cpu_seconds(p.pid) for name, p in procs.items()}
        for name, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited ({p.returncode}) during the outage; see {workdir}")
        used = {name: after[name] - before[name] for name in procs}  # type: ignore[operator]  # both alive: read

        broker.start(port=int(bootstrap.rsplit(":", 1)[1]))
        print("broker back; waiting for rides to be produced and confirmed again", file=sys.stderr)
        produced, decided = end_offsets(bootstrap, details), end_offsets(bootstrap, confirmed)
        wait_for("rides.py producing again", grows(bootstrap, details, produced))
        wait_for("transaction.py confirming again", grows(bootstrap, confirmed, decided))
        return {name: seconds / elapsed for name, seconds in used.items()} | {"window": elapsed}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--outage", type=float, default=30.0, help="seconds the broker stays down (default: 30)")
    p.add_argument("--rate", type=float, default=50.0, help="rides.py --rate (default: 50)")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-outage-cpu-"))
    try:
        shares = measure(args.outage, args.rate, workdir)
    except Exception as e:
        print(f"outage_cpu: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    window = shares.pop("window")
    for name, share in shares.items():
        print(f"{name:15} {share * window:6.1f} CPU s in a {window:.0f} s outage ({share:.0%} of one core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
