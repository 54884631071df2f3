"""Chaos: thousands of rides at a fixed rate while scripts are SIGKILLed and the broker restarts.

Then reconcile what a user cares about: every ride requested is decided (confirmed or rejected) exactly
once, every confirmed rider got exactly one email, and analysis counted every confirmed ride exactly
once. Meanwhile a second rides.py with the same seed sends the first rides again (a client retrying):
each ride is still decided once. The same scenario with `transaction.py --guarantee at-least-once` must
find duplicates in ride_confirmed (a crash after a batch's outputs and before its decisions are remembered
publishes them again): proof that this test can see them, so its "0 duplicated" for exactly-once means
something.

Run on its own with `make chaos` (or `pytest -m chaos`).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from common import topics
from common.stats import load_state
from common.topics import PARTITIONS
from tests.integration.pipeline import Script, keys, parse_summary, read_all, unique_prefix, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

RIDES = 5000
RATE = 100  # rides per second: production lasts ~50 s, long enough for every planned failure
# Duplicate submissions: the same seed again, slower, so every resent ride was first sent a while before.
RESENT, RESEND_RATE = 800, 20

# Planned failures, each at a random moment (seeded, logged) while rides are being produced.
# transaction.py's kills come as a crash loop: each restart is killed again while it catches up on the
# backlog its outage left, when a batch is most likely half published.
KILLS = {"transaction": 3, "email": 2, "analysis": 1}
BROKER_RESTARTS = 1


class Pipeline:
    """transaction.py, email.py and analysis.py for one scenario, restartable with the same state."""

    def __init__(self, bootstrap: str, prefix: str, guarantee: str, workdir: Path) -> None:
        self.bootstrap, self.prefix, self.workdir = bootstrap, prefix, workdir
        self.outbox = workdir / "outbox"
        self.args = {
            "transaction": ("transaction.py", "--guarantee", guarantee, "--instance", "chaos"),
            "email": ("email.py", "--outbox", str(self.outbox)),
            "analysis": ("analysis.py", "--state", str(workdir / "analysis.db"), "--every", "60"),
        }
        self.scripts: dict[str, Script] = {}
        self.history: list[Script] = []
        # read_uncommitted: the high watermarks count records of open transactions too.
        self.watcher = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted")
        self.outputs = [TopicPartition(prefix + topic, p) for topic, n in
                        ((topics.RIDE_CONFIRMED, PARTITIONS[topics.RIDE_CONFIRMED]),
                         (topics.RIDE_REJECTED, PARTITIONS[topics.RIDE_REJECTED])) for p in range(n)]
        changelog = prefix + topics.decided_topic(f"{prefix}transaction")
        self.changelog = [TopicPartition(changelog, p) for p in range(PARTITIONS[topics.RIDE_DETAILS])]
        for name in self.args:
            self.start(name)

    def start(self, name: str) -> None:
        script, *args = self.args[name]
        self.scripts[name] = Script(script, *args, "--wait", "120", bootstrap=self.bootstrap, prefix=self.prefix,
                                    group_id=f"{self.prefix}{name}", log_dir=self.workdir)
        self.history.append(self.scripts[name])

    def crash_and_restart(self, name: str, rng: random.Random) -> None:
        assert self.scripts[name].running, f"{name} died on its own:\n{self.scripts[name].log()[-3000:]}"
        self.scripts[name].kill()  # SIGKILL: no flush, no commit, no goodbye
        time.sleep(rng.uniform(0.2, 2.0))
        self.start(name)

    def crash_loop(self, name: str, kills: int, rng: random.Random) -> None:
        """Kill now, then kill each restart again in the middle of a batch of its catch-up: its outputs
        written, the rides it decided not yet (at-least-once: published, not remembered; exactly-once: a
        transaction left open). A batch that completes before the watcher sees it is let go: the next one
        is waited for."""
        for i in range(kills):
            if i:
                self.scripts[name].wait_for_log(r"partitions assigned: \S+\[\d", timeout=90)
                self.catch_mid_batch(self.scripts[name], timeout=60)
            self.crash_and_restart(name, rng)

    def catch_mid_batch(self, script: Script, timeout: float) -> None:
        """Return once outputs were written since the last look and decided rides were not. Exactly-once: the
        batch's transaction is open, the kill leaves it for the next instance to abort. At-least-once, where
        the decisions follow the outputs by one round trip: the script is frozen (SIGSTOP) and the decisions
        must still be missing once what it had sent has landed, or the batch is let go (SIGCONT) and the next
        one waited for; without that check the kill could land just after them, and publish nothing twice."""
        verify = "at-least-once" in self.args["transaction"]
        deadline = time.monotonic() + timeout
        last = (self.published(), self.remembered())
        while time.monotonic() < deadline:
            now = (self.published(), self.remembered())
            if now[0] > last[0] and now[1] == last[1]:
                if not verify:
                    return
                os.kill(script.pid, signal.SIGSTOP)
                time.sleep(0.2)  # requests already on the wire reach the broker
                if self.remembered() == now[1]:
                    return
                os.kill(script.pid, signal.SIGCONT)
                now = (self.published(), self.remembered())
            if now[1] > last[1]:
                last = now  # that batch is complete
            time.sleep(0.005)
        raise AssertionError(f"{script.name}: no batch caught half done within {timeout:.0f} s")

    def published(self) -> int:
        """Records written to transaction.py's output topics so far, committed or not."""
        return sum(self.watcher.end_offsets(self.outputs).values())

    def remembered(self) -> int:
        """Records written to transaction.py's changelog of decided rides so far, committed or not."""
        return sum(self.watcher.end_offsets(self.changelog).values())

    def alive(self) -> bool:
        """True; fails the test at once, with the log, if a script died on its own."""
        for name, script in self.scripts.items():
            assert script.running, f"{name} died on its own:\n{script.log()[-3000:]}"
        return True

    def analysed(self) -> int:
        state = self.workdir / "analysis.db"
        return load_state(state)[0].all.rides if state.exists() else 0

    def emailed(self) -> set[str]:
        return {p.stem for p in self.outbox.glob("*.eml")}

    def stop_all(self) -> None:
        for name, script in self.scripts.items():
            assert script.running, f"{name} died on its own:\n{script.log()[-3000:]}"
            script.stop()  # SIGTERM: exit 0 within 10 s, after a final commit

    def kill_all(self) -> None:
        for script in self.history:
            script.kill()
        self.watcher.close()


class Outcome:
    """What a run under faults came to: each requested ride's decisions (confirmed and rejected, as read
    read_committed), the riders emailed and the rides analysed. test_failover reconciles the same way."""

    def __init__(self, requested: set[str], confirmed: Counter, rejected: Counter, pipeline: Pipeline) -> None:
        self.requested, self.confirmed, self.rejected = requested, confirmed, rejected
        self.decisions = confirmed + rejected
        self.lost = requested - set(self.decisions)
        self.duplicated = sum(n - 1 for n in self.decisions.values())
        self.emailed = pipeline.emailed()
        self.analysed = pipeline.analysed()

    def counts(self) -> str:
        return (f"confirmed={len(self.confirmed)} rejected={len(self.rejected)} lost={len(self.lost)} "
                f"duplicated={self.duplicated} emailed={len(self.emailed)} analysed={self.analysed}")

    def duplicates(self) -> str:
        return f"{self.duplicated} duplicated decisions: {[k for k, n in self.decisions.items() if n > 1][:5]}"

    def check(self, where: str = "") -> None:
        """Every ride decided, none both ways, one email per confirmed ride and none else, analysis exact (the
        duplicates are each test's to judge)."""
        at = f" {where}" if where else ""
        assert not self.lost, f"{len(self.lost)} rides never confirmed nor rejected, e.g. {sorted(self.lost)[:5]}{at}"
        assert not set(self.confirmed) & set(self.rejected), f"a ride both confirmed and rejected{at}"
        assert self.emailed == set(self.confirmed), \
            f"exactly one email file per confirmed ride, and none for others{at}"
        # analysis counts what it reads from ride_confirmed, exactly once per record, across every crash.
        confirmed = sum(self.confirmed.values())
        assert self.analysed == confirmed, f"analysed {self.analysed}, confirmed {confirmed}{at}"


def plan(rng: random.Random, window: tuple[float, float]) -> list[tuple[float, str]]:
    """The failures to inject and when (seconds after rides.py starts), in the order they happen.

    transaction.py's crash loop starts early, since it takes a while; an event whose moment has passed
    when the one before it ends happens right away.
    """
    start, end = window
    events = [(rng.uniform(start, start + (end - start) / 4), "transaction-loop")]
    events += [(rng.uniform(start, end), name) for name, n in KILLS.items() if name != "transaction"
               for _ in range(n)]
    events += [(rng.uniform(start, end), "broker") for _ in range(BROKER_RESTARTS)]
    return sorted(events)


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_nothing_lost_nothing_twice_under_crashes(guarantee, kafka_bootstrap, restart_broker, tmp_path, capsys):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    prefix = unique_prefix("chaos")
    schedule = plan(rng, window=(3.0, RIDES / RATE - 5.0))
    print(f"chaos seed={seed} schedule={[(round(t, 1), e) for t, e in schedule]}")

    pipeline = Pipeline(kafka_bootstrap, prefix, guarantee, tmp_path)
    try:
        rides = Script("rides.py", "--count", str(RIDES), "--rate", str(RATE), "--seed", str(seed), "--wait", "120",
                       bootstrap=kafka_bootstrap, prefix=prefix, log_dir=tmp_path)
        resend = Script("rides.py", "--count", str(RESENT), "--rate", str(RESEND_RATE), "--seed", str(seed),
                        "--wait", "120", bootstrap=kafka_bootstrap, prefix=prefix, log_dir=tmp_path)
        pipeline.history += [rides, resend]
        started = time.monotonic()
        for at, event in schedule:
            time.sleep(max(0.0, started + at - time.monotonic()))
            pipeline.alive()
            if event == "broker":
                restart_broker()
            elif event == "transaction-loop":
                pipeline.crash_loop("transaction", KILLS["transaction"], rng)
            else:
                pipeline.crash_and_restart(event, rng)
        rides.wait(timeout=300)
        resend.wait(timeout=120)
        acknowledged = parse_summary(rides.log())["acknowledged"]
        assert parse_summary(resend.log())["acknowledged"] == RESENT

        requests = Counter(keys(read_all(kafka_bootstrap, prefix + "ride_details")))
        requested = set(requests)
        assert len(requested) >= acknowledged == RIDES
        assert sum(n > 1 for n in requests.values()) >= RESENT  # the resent rides are in there twice

        def decided() -> list[str]:
            return (keys(read_all(kafka_bootstrap, prefix + "ride_confirmed", quiet=1.0))
                    + keys(read_all(kafka_bootstrap, prefix + "ride_rejected", quiet=1.0)))

        wait_until(lambda: pipeline.alive() and requested <= set(decided()), timeout=240,
                   what="every requested ride decided")
        confirmed = Counter(keys(read_all(kafka_bootstrap, prefix + "ride_confirmed")))
        rejected = Counter(keys(read_all(kafka_bootstrap, prefix + "ride_rejected")))
        wait_until(lambda: pipeline.alive() and pipeline.emailed() >= set(confirmed), timeout=120,
                   what="every confirmed rider emailed")
        wait_until(lambda: pipeline.alive() and pipeline.analysed() >= sum(confirmed.values()), timeout=120,
                   what="analysis caught up")
        time.sleep(3)  # let a late duplicate, if there were one, reach the consumers before we count
        pipeline.stop_all()
    finally:
        pipeline.kill_all()

    outcome = Outcome(requested, confirmed, rejected, pipeline)
    with capsys.disabled():
        print(f"\nchaos[{guarantee}]: rides={len(requested)} requests={sum(requests.values())} "
              f"acknowledged={acknowledged} kills={KILLS} broker_restarts={BROKER_RESTARTS} {outcome.counts()} "
              f"seed={seed}")

    outcome.check()
    if guarantee == "exactly-once":
        assert outcome.duplicated == 0, outcome.duplicates()
    else:
        assert outcome.duplicated > 0, "at-least-once under SIGKILL should publish some batch twice; if this test " \
                                       "cannot see duplicates, its exactly-once verdict proves nothing"
