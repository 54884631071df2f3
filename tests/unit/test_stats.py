"""common.stats without a broker: the per-minute keys of the statistics."""

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from common.stats import minute_key
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
