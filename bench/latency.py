"""The latency runs of bench/pipeline.py (bench/README.md, "Latency"): rides.py at a steady rate through
transaction.py (exactly-once) and email.py running together, and each confirmed ride's time from its
requested_at to its confirmed record and to its email.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from report import Latency, percentiles
from runs import (
    POLL_INTERVAL,
    PROJECT_ROOT,
    STALL_TIMEOUT,
    BenchError,
    Run,
    admin,
    committed_total,
    create_input_topic,
    last_line,
    read_records,
)


def latency_samples(confirmed: list[tuple[str, int]], email_mtimes: dict[str, float | None],
                    requested: dict[str, datetime]) -> tuple[list[float], list[float]]:
    """Milliseconds from each ride's requested_at to its confirmed record's timestamp (CreateTime: stamped
    by transaction.py's producer when it sent the record) and to its .eml file's mtime (when email.py wrote
    it). confirmed: (ride_id, timestamp ms); requested: ride_id -> requested_at; email_mtimes: ride_id ->
    mtime (s), None for a ride with no email."""
    to_confirmed, to_email = [], []
    for ride_id, created_ms in confirmed:
        start = requested[ride_id].timestamp()
        to_confirmed.append(created_ms - start * 1000)
        mtime = email_mtimes.get(ride_id)
        if mtime is not None:
            to_email.append((mtime - start) * 1000)
    return to_confirmed, to_email


def wait_for(done: Callable[[], int], target: int, what: str, scripts: list, timeout: float = STALL_TIMEOUT) -> None:
    """Sample done() until it reaches target; a BenchError if a script exits first, or if done() has not
    grown for `timeout` s (a backlog that shrinks is slow, not stuck)."""
    deadline, best = time.monotonic() + timeout, -1
    while (count := done()) < target:
        for script in scripts:
            if not script.running:
                raise BenchError(f"{script.label} exited {script.process.returncode}: {last_line(script.log())}")
        if count > best:
            deadline, best = time.monotonic() + timeout, count
        if time.monotonic() > deadline:
            raise BenchError(f"latency run: {what}: {count} of {target}, then no progress for {timeout:.0f} s")
        time.sleep(POLL_INTERVAL)


def run_latency(bootstrap: str, prefix: str, rides_per_s: int, seconds: float, seed: int, work_dir: Path,
                procs: list) -> Latency:
    """rides.py --rate R for `seconds`, transaction.py (exactly-once) and email.py (outbox) running together
    on fresh topics; the latency of every ride, from requested_at to confirmed and to emailed."""
    from common import topics

    outbox = work_dir / prefix / "outbox"
    common_args = ["--bootstrap-servers", bootstrap, "--topic-prefix", prefix]
    create_input_topic(bootstrap, prefix)
    tx = Run(PROJECT_ROOT, "transaction.py", *common_args, "--group-id", f"{prefix}transaction", log_dir=work_dir)
    mail = Run(PROJECT_ROOT, "email.py", *common_args, "--group-id", f"{prefix}email", "--outbox", str(outbox),
               log_dir=work_dir)
    procs += [tx, mail]
    # Both consumers ready before the first ride: no start-up or group join in the figures. email.py once it
    # owns its partitions ("partitions assigned: none" comes first, while the group forms); transaction.py once
    # it has also read its decided rides back (its changelog, restored after the assignment).
    ready = {mail: f"partitions assigned: {prefix}", tx: "restored "}
    wait_for(lambda: sum(line in script.log() for script, line in ready.items()), 2, "consumers ready",
             [tx, mail], STALL_TIMEOUT * 2)
    n = int(rides_per_s * seconds)
    rides = Run(PROJECT_ROOT, "rides.py", *common_args, "--rate", str(rides_per_s), "--count", str(n), "--seed",
                str(seed), log_dir=work_dir)
    procs.append(rides)
    if rides.wait(timeout=seconds * 3 + STALL_TIMEOUT) != 0:
        raise BenchError(f"rides.py --rate {rides_per_s} failed: {last_line(rides.log())}")
    watcher = admin(bootstrap)
    try:
        wait_for(lambda: committed_total(watcher, f"{prefix}transaction", prefix + topics.RIDE_DETAILS), n,
                 "rides decided", [tx, mail])
    finally:
        watcher.close()
    confirmed = read_records(bootstrap, [prefix + topics.RIDE_CONFIRMED])
    wait_for(lambda: sum(1 for _ in outbox.glob("*.eml")), len(confirmed), "confirmed rides emailed", [tx, mail])
    mail.stop()
    tx.stop()
    requested = {}
    for r in confirmed:
        value = json.loads(r.value)
        requested[value["ride_id"]] = datetime.fromisoformat(value["requested_at"])
    mtimes = {ride_id: _mtime(outbox / f"{ride_id}.eml") for ride_id in requested}
    to_confirmed, to_email = latency_samples([(json.loads(r.value)["ride_id"], r.timestamp) for r in confirmed],
                                             mtimes, requested)
    if len(to_email) != len(confirmed):
        raise BenchError(f"latency run: {len(to_email)} emails for {len(confirmed)} confirmed rides")
    return Latency(rides_per_s, seconds, len(confirmed), percentiles(to_confirmed), percentiles(to_email))


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None
