"""analysis.py without a broker: folding statistics, the table, the saved state and how it resumes."""

import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

import analysis
from common import apply, clients, schemas, stores
from common.shutdown import Shutdown
from tests.unit.strategies import ride_confirmations

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


def ride(zone="Mitte", eta=6.0, fare="12.00", at=T0, currency="EUR") -> schemas.RideConfirmed:
    return schemas.RideConfirmed(
        ride_id=uuid4(), customer_id="c1", customer_email="c1@example.com",
        pickup=schemas.Place(lat=52.52, lon=13.4, zone=zone), dropoff=schemas.Place(lat=52.5, lon=13.41, zone="Pankow"),
        requested_at=at, driver_id="d1", distance_km=2.0, pickup_eta_minutes=eta, fare=Decimal(fare),
        currency=currency, confirmed_at=at,
    )


def fold_all(rides) -> analysis.Stats:
    stats = analysis.Stats()
    for r in rides:
        analysis.fold(stats, r)
    return stats


# ------------------------------------------------------------------------------------------- folding


def test_fold_counts_rides_per_zone_and_per_minute():
    stats = fold_all([ride("Mitte"), ride("Mitte", at=T0 + timedelta(seconds=59)),
                      ride("Kreuzberg", at=T0 + timedelta(minutes=1))])
    assert stats.all.rides == 3
    assert {z: t.rides for z, t in stats.zones.items()} == {"Mitte": 2, "Kreuzberg": 1}
    assert stats.minutes == {"2026-03-01 08:00": 2, "2026-03-01 08:01": 1}


def test_means_of_eta_and_fare():
    stats = fold_all([ride(eta=4.0, fare="10.00"), ride(eta=7.5, fare="15.01"), ride(eta=0.25, fare="0.02")])
    assert stats.all.mean_eta == pytest.approx((4.0 + 7.5 + 0.25) / 3)
    assert stats.all.mean_fare == Decimal("8.34")  # 25.03 / 3, to the cent
    assert analysis.Stats().all.mean_eta is None and analysis.Stats().all.mean_fare is None


def test_minutes_are_utc_whatever_the_offset_of_confirmed_at():
    berlin = timezone(timedelta(hours=1))
    stats = fold_all([ride(at=datetime(2026, 3, 1, 9, 0, 30, tzinfo=berlin))])
    assert stats.minutes == {"2026-03-01 08:00": 1}


@settings(max_examples=50, deadline=None)
@given(st.lists(ride_confirmations(), max_size=30), st.randoms(use_true_random=False))
def test_folding_in_any_order_gives_the_same_statistics(rides, rnd):
    shuffled = list(rides)
    rnd.shuffle(shuffled)
    in_order, any_order = fold_all(rides), fold_all(shuffled)
    assert in_order == any_order
    assert in_order.to_json() == any_order.to_json()
    assert in_order.all.rides == len(rides) == sum(t.rides for t in in_order.zones.values())
    assert sum(in_order.minutes.values()) == len(rides)
    if rides:
        exact_eta = sum(r.pickup_eta_minutes for r in rides) / len(rides)
        assert in_order.all.mean_eta == pytest.approx(exact_eta, abs=0.001)
        assert in_order.all.fare_cents == int(sum(r.fare for r in rides) * 100)


@settings(max_examples=50, deadline=None)
@given(st.lists(ride_confirmations(), max_size=10))
def test_statistics_survive_a_json_round_trip(rides):
    stats = fold_all(rides)
    stats.dead_lettered = 3
    assert analysis.Stats.from_json(stats.to_json()) == stats


# ------------------------------------------------------------------------------------------- the table


def test_render_shows_totals_busiest_zones_and_rides_per_minute():
    stats = fold_all([ride("Mitte", 4.0, "10.00"), ride("Mitte", 8.0, "20.00"),
                      ride("Kreuzberg", 6.0, "12.00", at=T0 + timedelta(minutes=2))])
    table = analysis.render(stats, T0 + timedelta(minutes=2, seconds=30), minutes=3)
    lines = table.splitlines()
    assert lines[0] == "confirmed rides: 3   mean pickup ETA: 6.0 min   mean fare: 14.00 EUR"
    assert lines[1].split() == ["pickup", "zone", "rides", "share", "ETA", "min", "fare"]
    assert lines[2].split() == ["Mitte", "2", "66.7%", "6.0", "15.00"]
    assert lines[3].split() == ["Kreuzberg", "1", "33.3%", "6.0", "12.00"]
    assert lines[4] == "  rides per minute (UTC): 08:00 2  08:01 0  08:02 1"


def test_render_of_nothing_yet():
    assert analysis.render(analysis.Stats(), T0) == "confirmed rides: 0   mean pickup ETA: -   mean fare: -"


def test_render_keeps_one_line_per_zone_whatever_the_zone_name_and_caps_the_zones():
    stats = fold_all([ride("evil\nzone"), *[ride(f"zone-{i}") for i in range(10)]])
    table = analysis.render(stats, T0, zones=8)
    assert "evil?zone" in table
    assert len(table.splitlines()) == 1 + 1 + 8 + 1 + 1
    assert "... and 3 more zones" in table


def test_render_does_not_average_fares_of_different_currencies():
    stats = fold_all([ride(currency="EUR"), ride(currency="USD")])
    assert "(several currencies)" in analysis.render(stats, T0)


def test_summary_line_format():
    stats = fold_all([ride(eta=5.0, fare="10.00"), ride("Kreuzberg", eta=6.0, fare="11.00")])
    stats.dead_lettered = 1
    assert analysis.summary(stats) == "total=2 zones=2 mean_eta_min=5.50 mean_fare=10.50 dead_lettered=1"
    assert analysis.summary(analysis.Stats()) == "total=0 zones=0 mean_eta_min=- mean_fare=- dead_lettered=0"


# --------------------------------------------------------------------------------------- saved state
# (the state file itself: tests/unit/test_stores.py; resuming from it: tests/unit/test_apply.py)

TP0, TP1 = TopicPartition("p.ride_confirmed", 0), TopicPartition("p.ride_confirmed", 1)


def record(partition: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord("p.ride_confirmed", partition, -1, offset, 0, 0, b"k", b"v", [], None, -1, -1, -1)


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: dict[TopicPartition, int | str] = {}

    def seek(self, tp, offset):
        self.seeks[tp] = offset

    def seek_to_beginning(self, *tps):
        for tp in tps:
            self.seeks[tp] = "beginning"


def test_assigned_partitions_resume_from_the_saved_offsets_or_the_beginning():
    listener = apply.ResumeFromStore({TP0: 42})
    listener.consumer = FakeConsumer()
    listener.on_partitions_assigned({TP0, TP1})
    assert listener.consumer.seeks == {TP0: 42, TP1: "beginning"}


def test_a_replay_of_everything_folds_nothing_twice(tmp_path):
    # What a restart after kill -9 amounts to: the same records again, from wherever Kafka resumes.
    rides = [ride(random.choice(["A", "B", "C"])) for _ in range(20)]
    records = [record(0, i) for i in range(20)]
    stats, saved = analysis.Stats(), {}
    for batch in (records[:8], records[:15], records, records[5:]):  # overlapping, as replays are
        for r in apply.unseen(batch, saved):
            analysis.fold(stats, rides[r.offset])
        saved.update(apply.advance(saved, batch))
    assert stats == fold_all(rides)


def test_pruning_keeps_exactly_the_last_day_of_minutes_whatever_the_order():
    # Three days of rides, one every 7 minutes, folded in a shuffled order and pruned after every "batch".
    rides = [ride(at=T0 + timedelta(minutes=7 * i)) for i in range(3 * 24 * 60 // 7)]
    newest = max(r.confirmed_at for r in rides)
    expected = {}
    for r in rides:
        if r.confirmed_at > newest - timedelta(minutes=analysis.RETAINED_MINUTES):
            expected[analysis.minute_of(r)] = expected.get(analysis.minute_of(r), 0) + 1
    random.Random(1).shuffle(rides)
    stats = analysis.Stats()
    for start in range(0, len(rides), 50):
        for r in rides[start:start + 50]:
            analysis.fold(stats, r)
        analysis.prune(stats, now=newest + timedelta(seconds=30))
    assert stats.minutes == expected
    assert 200 < sum(expected.values()) < 210  # the last 1,440 minutes: 205 or 206 rides at one per 7 min
    assert stats.all.rides == len(rides)  # totals are never pruned


FAR_FUTURE = datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc)


def test_one_confirmation_from_the_far_future_erases_no_minute():
    # Any producer of ride_confirmed can write confirmed_at=9999-12-31T23:59Z. The window follows the wall
    # clock, so that record cannot push every real minute out of it.
    now = T0 + timedelta(minutes=10, seconds=5)
    real = [ride(at=T0 + timedelta(minutes=i)) for i in range(11)]
    stats = fold_all([*real, ride(at=FAR_FUTURE)])
    analysis.prune(stats, now=now)
    assert stats.minutes == {analysis.minute_of(r): 1 for r in real}
    assert stats.all.rides == 12  # counted in the totals all the same
    last = analysis.render(stats, now, minutes=3).splitlines()[-1]
    assert last == "  rides per minute (UTC): 08:08 1  08:09 1  08:10 1"


def test_pruning_keeps_the_window_around_now_and_nothing_else():
    now = T0 + timedelta(days=3)
    window = analysis.RETAINED_MINUTES
    skew = analysis.CLOCK_SKEW_MINUTES
    kept = [now - timedelta(minutes=window - 1), now, now + timedelta(minutes=skew)]
    dropped = [now - timedelta(minutes=window + 1), now + timedelta(minutes=skew + 1), T0, FAR_FUTURE]
    stats = fold_all([ride(at=at) for at in kept + dropped])
    analysis.prune(stats, now=now)
    assert sorted(stats.minutes) == sorted(analysis.minute_of(ride(at=at)) for at in kept)
    assert stats.all.rides == len(kept) + len(dropped)


def test_the_table_shows_the_minutes_up_to_now_whatever_the_data():
    stats = fold_all([ride(at=T0), ride(at=T0 + timedelta(minutes=1))])
    # An hour later with no new rides: the table says so, instead of repeating the last busy minutes.
    table = analysis.render(stats, T0 + timedelta(hours=1, seconds=59), minutes=2)
    assert table.splitlines()[-1] == "  rides per minute (UTC): 08:59 0  09:00 0"


class Stop(Exception):
    pass


def test_the_start_up_admin_calls_survive_a_broker_that_drops_the_connection(tmp_path, monkeypatch):
    # The admin client is built, then the broker goes away before describe_topics answers: a
    # KafkaConnectionError after connect() returned. That must be retried like a failed connect.
    from kafka.errors import KafkaConnectionError

    calls = []

    class FlakyAdmin:
        def list_topics(self):
            return ["p.ride_confirmed", "p.ride_confirmed.dlq"]

        def describe_topics(self, names):
            calls.append(names)
            if len(calls) == 1:
                raise KafkaConnectionError("111 ECONNREFUSED")
            return [{"name": names[0], "error_code": 0, "partitions": [{"partition_index": 0}], "topic_id": "id-1"}]

        def close(self):
            pass

    def producer(*_args, **_kwargs):
        raise Stop  # got past the admin block: that is all this test needs

    monkeypatch.setattr(clients, "admin", lambda settings: FlakyAdmin())
    monkeypatch.setattr(clients, "producer", producer)
    monkeypatch.setattr(Shutdown, "on_signals", classmethod(lambda cls: cls()))
    with pytest.raises(Stop):
        analysis.main(["--state", str(tmp_path / "analysis.db"), "--topic-prefix", "p.", "--wait", "10"])
    assert len(calls) == 2
    assert stores.load_state(tmp_path / "analysis.db") == (None, {})


def test_a_ride_that_cannot_be_counted_is_refused_whole_and_changes_nothing():
    stats = analysis.fold(analysis.Stats(), ride())
    before = stats.to_json()
    broken = ride(zone="Elsewhere").model_copy(update={"confirmed_at": "not a time"})  # no validation: a bug's ride
    with pytest.raises(schemas.PoisonRecord, match=r"^cannot be counted: TypeError"):
        schemas.record_step("cannot be counted", analysis.fold, stats, broken)
    assert stats.to_json() == before  # not half counted: no total, no zone, no minute


def test_a_start_that_fails_prints_no_table_only_a_run_that_started_does(tmp_path, capsys, monkeypatch):
    # The table at exit is what the run counted; a start refused (Kafka unreachable here, or another
    # source's state file) must not print the state file's old statistics as if they were this run's.
    from common.errors import Fatal

    monkeypatch.setattr(Shutdown, "on_signals", classmethod(lambda cls: cls()))
    path = tmp_path / "analysis.db"
    state = stores.State(path)
    state.save(fold_all([ride()]).to_json(), {TP0: 1})
    state.close()
    with pytest.raises(Fatal, match="Kafka is unreachable"):
        analysis.main(["--state", str(path), "--bootstrap-servers", "127.0.0.1:1", "--wait", "0"])
    assert capsys.readouterr().out == ""
