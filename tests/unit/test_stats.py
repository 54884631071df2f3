"""common.stats without a broker: the per-minute keys of the statistics."""

import json
from dataclasses import asdict
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from common.stats import Stats, Totals, minute_key
from tests.unit.strategies import offsets

# Whatever schemas.Timestamp accepts: from the epoch up to the last minute of year 9999 in UTC, any offset.
timestamps = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30),
                          timezones=st.one_of(st.just(timezone.utc), offsets))


def strftime_minute(at: datetime) -> str:  # what the key has always been: the state files hold it
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


@settings(max_examples=500, deadline=None)
@given(timestamps)
def test_a_minute_key_is_the_utc_minute_as_strftime_writes_it(at):
    assert minute_key(at) == strftime_minute(at)


def test_minute_keys_at_the_edges_of_a_minute_of_the_epoch_and_of_year_9999():
    last = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)
    berlin = timezone(timedelta(hours=1))
    cases = {
        datetime(1970, 1, 1, tzinfo=timezone.utc): "1970-01-01 00:00",
        datetime(2026, 3, 1, 8, 0, 59, 999999, tzinfo=timezone.utc): "2026-03-01 08:00",
        datetime(2026, 3, 1, 8, 1, tzinfo=timezone.utc): "2026-03-01 08:01",
        datetime(2026, 3, 1, 9, 0, 30, tzinfo=berlin): "2026-03-01 08:00",
        datetime(2026, 1, 1, 0, 30, tzinfo=berlin): "2025-12-31 23:30",  # another day and year in UTC
        last: "9999-12-31 23:59",  # a float timestamp rounds this one up into year 10000
        last.astimezone(timezone(timedelta(hours=-23, minutes=-59))): "9999-12-31 23:59",
    }
    assert {at: minute_key(at) for at in cases} == cases
    assert all(minute_key(at) == strftime_minute(at) for at in cases)


def a_day_of_statistics() -> Stats:
    stats = Stats(currencies={"USD": 86_400}, dead_lettered=2)
    stats.all.add(1, 2)
    for i in range(1440):
        stats.minutes[f"2026-11-23 {i // 60:02d}:{i % 60:02d}"] = 60
    for i in range(40):
        stats.zones[f"Zone {i}"] = Totals(2160, 2160 * 6500, 2160 * 2250)
    return stats


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=20), st.integers(0, 10**6), st.integers(0, 10**9)), max_size=20),
       st.dictionaries(st.text(max_size=16), st.integers(0, 10**6), max_size=20), st.integers(0, 10**6))
def test_the_state_is_saved_as_the_json_of_its_fields_as_ever(zones, minutes, dead_lettered):
    # State files written before stay readable and compare equal: the same JSON text for the same statistics.
    stats = Stats(zones={z: Totals(1, eta, fare) for z, eta, fare in zones}, minutes=minutes,
                  currencies={"USD": len(zones)}, dead_lettered=dead_lettered)
    assert stats.to_json() == json.dumps(asdict(stats), sort_keys=True)
    assert Stats.from_json(stats.to_json()) == stats
    assert a_day_of_statistics().to_json() == json.dumps(asdict(a_day_of_statistics()), sort_keys=True)


@pytest.mark.parametrize("hostile", [
    {"all": {"rides": 1, "eta_milli": 1000, "fare_cents": 10**41}},
    {"all": {"rides": -3, "eta_milli": 0, "fare_cents": 0}},
    {"minutes": {"2026-12-02 12:00": -1}},
    {"all": {"rides": 1, "eta_milli": int("9" * 400), "fare_cents": 0}},
])
def test_a_state_out_of_bounds_is_refused_not_served(hostile):
    # What a forged snapshot on ride_stats carried: it once made every mean fail in api.py's /stats.
    with pytest.raises(ValidationError):
        Stats.from_json_object(hostile)
