"""analysis.py's state file cannot be fooled, against the real broker: a confirmation from the far future
erases no minute, a state file is never merged with another topic's or group's, and the lock on it cannot
be deleted from under a running instance."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import analysis
from common import clients, topics
from common.settings import Settings
from common.stats import load_state
from tests.integration.pipeline import Script, parse_summary, produce_raw, unique_prefix, wait_until
from tests.integration.test_consumers import as_records, confirmed_rides


class Analysis:
    """One test's prefix, state file and logs; analysis.py runs with --topic-prefix and a group of its own."""

    def __init__(self, bootstrap: str, tmp_path: Path) -> None:
        self.bootstrap = bootstrap
        self.prefix = unique_prefix("analysis")
        self.state = tmp_path / "analysis.db"
        self.logs = tmp_path / "logs"
        self.logs.mkdir()

    def script(self, *, prefix: str | None = None, group_id: str | None = None) -> Script:
        prefix = prefix or self.prefix
        return Script("analysis.py", "--state", str(self.state), "--every", "1", "--minutes", "15",
                      bootstrap=self.bootstrap, prefix=prefix, group_id=group_id or self.prefix + "analysis",
                      log_dir=self.logs)

    def produce(self, rides, prefix: str | None = None) -> None:
        settings = Settings(bootstrap_servers=self.bootstrap, topic_prefix=prefix or self.prefix)
        admin = clients.admin(settings)
        try:  # the pipeline's own partition counts, as analysis.py would create them
            clients.create_topics(admin, settings,
                                 [topics.RIDE_CONFIRMED, topics.dead_letter_topic(topics.RIDE_CONFIRMED)])
        finally:
            admin.close()
        produce_raw(self.bootstrap, (prefix or self.prefix) + topics.RIDE_CONFIRMED, as_records(rides))

    def analysed(self) -> int:
        try:
            return load_state(self.state)[0].all.rides
        except sqlite3.Error:  # not created yet
            return 0

    def wait_analysed(self, n: int, timeout: float = 90) -> None:
        wait_until(lambda: self.analysed() >= n, timeout, f"{n} rides analysed (state: {self.analysed()})")


@pytest.fixture
def run(kafka_bootstrap, tmp_path) -> Analysis:
    return Analysis(kafka_bootstrap, tmp_path)


def refused(script: Script, *needles: str) -> str:
    """The script exited 1 with one ERROR line naming each needle, and no traceback."""
    script.wait(timeout=60, expect=1)
    errors = [line for line in script.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in script.log(), script.log()
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_a_confirmation_from_the_far_future_erases_no_real_minute(run):
    start = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=10)
    real = [r.model_copy(update={"confirmed_at": start + timedelta(seconds=20 * i)})
            for i, r in enumerate(confirmed_rides(30))]
    hostile = confirmed_rides(1, seed=2)[0].model_copy(
        update={"confirmed_at": datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc)})
    run.produce(real[:15])
    run.produce([hostile])
    run.produce(real[15:])
    with run.script() as analyser:
        run.wait_analysed(31)
        analyser.stop()
    stats = load_state(run.state)[0]
    expected = {}
    for r in real:
        expected[analysis.minute_of(r)] = expected.get(analysis.minute_of(r), 0) + 1
    assert stats.minutes == expected
    assert parse_summary(analyser.log())["total"] == 31  # the totals count it all the same
    # The last table (printed at the stop) shows the ten minutes of rides, ending at the wall clock.
    per_minute = analyser.stdout().strip().splitlines()[-1]
    assert per_minute.startswith("  rides per minute (UTC): ")
    shown = dict(pair.split() for pair in per_minute.split(": ", 1)[1].split("  "))
    # The hostile ride (23:59 of the year 9999) is not among them: it would add one. (Its "23:59" may be
    # shown all the same, as a real minute, when the test runs just after midnight.)
    assert sum(int(n) for n in shown.values()) == 30


def test_a_state_is_never_merged_with_another_topic_or_group(run):
    # What renaming ride_confirmed in common/topics.py and back amounts to: another topic name.
    run.produce(confirmed_rides(20))
    with run.script() as first:
        run.wait_analysed(20)
        first.stop()
    other_prefix = unique_prefix("renamed")
    run.produce(confirmed_rides(7, seed=3), prefix=other_prefix)

    renamed = run.script(prefix=other_prefix, group_id=run.prefix + "analysis")
    with renamed:
        refused(renamed, f"topic {other_prefix}ride_confirmed", "delete the file or pass another --state")
    other_group = run.script(group_id=run.prefix + "other")
    with other_group:
        refused(other_group, f"group {run.prefix}other", "delete the file or pass another --state")
    assert run.analysed() == 20  # nothing of the other topic was counted

    with run.script() as again:  # its own topic and group: resumes where it stopped
        again.wait_for_log("analysing confirmed rides")
        again.stop()
    assert parse_summary(again.log())["total"] == 20


def test_a_second_instance_is_refused_even_after_every_other_file_is_deleted(run):
    run.produce(confirmed_rides(10))
    with run.script() as first:
        run.wait_analysed(10)
        for other in run.state.parent.iterdir():  # a lock file, the WAL and its index, if any
            if other.is_file() and other != run.state:
                other.unlink()
        second = run.script()
        with second:
            refused(second, "another analysis.py is using", str(run.state))
        assert first.running
        first.stop()
