"""The stores beside Kafka (common.stores), without a broker: the state file saved with its offsets, its lock,
and whose state it is. (The ledger: tests/unit/test_email.py.)"""

import subprocess
import sys

import pytest
from kafka.structs import TopicPartition

from common.errors import Fatal
from common.stats import Stats
from common.stores import State, load_state
from tests.unit.test_analysis import fold_all, ride

TP0, TP1 = TopicPartition("p.ride_confirmed", 0), TopicPartition("p.ride_confirmed", 1)


def test_state_round_trip_and_reopen(tmp_path):
    path = tmp_path / "analysis.db"
    state = State(path)
    assert state.load() == (None, {})
    stats = fold_all([ride(), ride("Kreuzberg")])
    state.save(stats.to_json(), {TP0: 5, TP1: 2})
    state.save(fold_all([ride(), ride("Kreuzberg"), ride()]).to_json(), {TP0: 6})
    state.close()
    loaded, offsets = load_state(path)
    assert Stats.from_json(loaded).all.rides == 3
    assert offsets == {TP0: 6, TP1: 2}
    reopened = State(path)
    assert reopened.load() == (loaded, offsets)
    reopened.close()


def test_a_save_that_fails_half_way_leaves_the_previous_statistics_and_offsets(tmp_path):
    state = State(tmp_path / "analysis.db")
    state.save(fold_all([ride()]).to_json(), {TP0: 1})
    with pytest.raises(Exception):  # noqa: B017 - the point is what is left behind, whatever the error
        state.save(fold_all([ride(), ride()]).to_json(), {TP0: 2, TP1: None})  # the offsets' NOT NULL fails last
    stats, offsets = state.load()
    assert Stats.from_json(stats).all.rides == 1 and offsets == {TP0: 1}
    state.close()


def test_a_second_instance_on_the_same_state_file_is_refused(tmp_path):
    first = State(tmp_path / "analysis.db")
    try:
        with pytest.raises(Fatal, match="another analysis.py is using"):
            State(tmp_path / "analysis.db")
    finally:
        first.close()
    State(tmp_path / "analysis.db").close()  # free again once the first has closed


def test_the_lock_is_the_state_file_itself_so_deleting_any_other_file_frees_nothing(tmp_path):
    first = State(tmp_path / "analysis.db")
    try:
        first.save(fold_all([ride()]).to_json(), {TP0: 1})
        for other in tmp_path.iterdir():  # a .lock file, the WAL, its index: whatever sits beside it
            if other.name != "analysis.db":
                other.unlink()
        with pytest.raises(Fatal, match="another analysis.py is using"):
            State(tmp_path / "analysis.db")
    finally:
        first.close()


# Another process reading the state with SQLite alone, as load_state() does.
READ_RIDES = """import json, sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(json.loads(db.execute("SELECT json FROM stats").fetchone()[0])["all"]["rides"])
"""


def test_the_lock_leaves_sqlite_alone(tmp_path):
    # flock() and SQLite's own POSIX (fcntl) locks are independent on Linux: while the state is locked,
    # its owner keeps saving and another process can still read it (tests and the demo do).
    path = tmp_path / "analysis.db"
    state = State(path)
    try:
        for n in range(1, 4):
            state.save(fold_all([ride()] * n).to_json(), {TP0: n})
            out = subprocess.run([sys.executable, "-c", READ_RIDES, str(path)], capture_output=True, text=True,
                                 timeout=60)
            assert out.stdout.strip() == str(n), out.stderr
    finally:
        state.close()


SOURCE = ("p.ride_confirmed", "id-1", "p.analysis")


def test_a_state_is_bound_to_one_topic_name_topic_id_and_group(tmp_path):
    state = State(tmp_path / "analysis.db")
    try:
        state.bind(*SOURCE)
        state.bind(*SOURCE)  # the same source: fine
        for other, what in [(("q.ride_confirmed", "id-1", "p.analysis"), "topic q.ride_confirmed"),
                            (("p.ride_confirmed", "id-3", "p.analysis"), "topic id id-3"),
                            (("p.ride_confirmed", "id-1", "other"), "group other")]:
            with pytest.raises(Fatal) as e:
                state.bind(*other)
            message = str(e.value)
            assert "\n" not in message and what in message
            assert "p.ride_confirmed" in message and "delete the file or pass another --state" in message
    finally:
        state.close()


def test_a_state_that_counted_another_topic_before_it_was_bound_is_refused(tmp_path):
    state = State(tmp_path / "analysis.db")
    try:
        state.save(fold_all([ride()]).to_json(), {TopicPartition("old.ride_confirmed", 0): 1})
        with pytest.raises(Fatal, match="old.ride_confirmed"):
            state.bind(*SOURCE)
    finally:
        state.close()


