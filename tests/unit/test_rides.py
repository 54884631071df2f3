"""rides.py's pure side: the same seed gives the same rides, and every ride is a valid request."""

import itertools
import random
import re
from collections import Counter
from datetime import datetime, timezone
from itertools import islice

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rides
from common import city, schemas
from common.schemas import RideRequest

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def take(seed: int, n: int) -> list[RideRequest]:
    return list(islice(rides.rides(seed, clock=lambda: NOW), n))


def test_same_seed_same_rides():
    assert take(42, 300) == take(42, 300)


def test_other_seed_other_rides():
    a, b = take(1, 100), take(2, 100)
    assert {r.ride_id for r in a}.isdisjoint(r.ride_id for r in b)


def test_build_ride_depends_only_on_the_rng_state():
    assert rides.build_ride(random.Random(7), NOW) == rides.build_ride(random.Random(7), NOW)


def test_ride_ids_are_unique_version_4_uuids():
    ids = [r.ride_id for r in take(3, 10_000)]
    assert len(set(ids)) == len(ids)
    assert all(i.version == 4 for i in ids)


def test_every_ride_survives_the_wire_and_is_keyed_by_its_id():
    for ride in take(5, 2000):
        key, value = schemas.ride_key(ride.ride_id), schemas.encode(ride)
        assert key == str(ride.ride_id).encode()
        assert schemas.decode(RideRequest, key, value) == ride


def test_customers_come_from_the_pool_with_their_own_email():
    seen = take(6, 3000)
    pool = {rides.customer(n) for n in range(rides.CUSTOMERS)}
    assert len({c.email for c in pool}) == rides.CUSTOMERS  # one email per customer
    for ride in seen:
        assert (ride.customer_id, ride.customer_name, ride.customer_email) in pool
        assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", ride.customer_name)
        assert re.fullmatch(r"cust-\d{5}", ride.customer_id)
    # A pool, not one customer per ride: some customers ride again.
    assert len({r.customer_id for r in seen}) < len(seen)


def test_places_are_named_by_their_zone_and_about_two_percent_are_outside():
    sample = take(8, 10_000)
    outside = 0
    for ride in sample:
        for place in (ride.pickup, ride.dropoff):
            assert place.zone == city.zone_of(place.lat, place.lon)
        inside = [city.in_service_area(p.lat, p.lon) for p in (ride.pickup, ride.dropoff)]
        assert sum(inside) >= 1  # at most one end is outside
        outside += not all(inside)
    assert 0.01 * len(sample) < outside < 0.03 * len(sample)


def test_every_outside_place_is_outside_whatever_its_jitter():
    for _name, lat, lon in rides.OUTSIDE_PLACES:
        for dlat, dlon in itertools.product((-0.003, 0, 0.003), repeat=2):
            assert not city.in_service_area(lat + dlat, lon + dlon), _name


def test_places_follow_the_city_s_demand():
    zones = Counter(place.zone for ride in take(10, 5000) for place in (ride.pickup, ride.dropoff))
    midtown = sum(n for zone, n in zones.items() if zone.startswith("Midtown"))
    assert midtown > 0.25 * 10_000 and zones["Inwood"] < 0.01 * 10_000
    assert set(zones) - {city.OUTSIDE} == {z.name for z in city.ZONES}


def test_timestamps_are_utc_from_the_clock_and_passengers_plausible():
    for ride in take(9, 500):
        assert ride.requested_at == NOW and ride.requested_at.utcoffset().total_seconds() == 0
        assert 1 <= ride.passengers <= 4


def test_default_clock_is_utc_now():
    ride = next(rides.rides(1))
    assert ride.requested_at.tzinfo is not None and ride.requested_at.utcoffset().total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - ride.requested_at).total_seconds()) < 60


@pytest.mark.parametrize("flags", [["--count", "0"], ["--rate", "-1"], ["--seed", "x"]])
def test_bad_flags_exit_2_before_touching_kafka(flags, capsys):
    with pytest.raises(SystemExit) as e:
        rides.main(["--bootstrap-servers", "localhost:1", *flags])
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def wire(seed: int, n: int) -> list[tuple[bytes, bytes]]:
    return list(islice(rides.records(seed, clock=lambda: NOW), n))


def test_the_records_sent_are_the_rides_keyed_by_their_id_byte_for_byte():
    # What rides.py sends is serialized from unvalidated fields: every record must be exactly the validated
    # ride of the same seed, as schemas.encode would write it, and keyed by its ride_id.
    for seed in range(300):
        for (key, value), ride in zip(wire(seed, 20), take(seed, 20), strict=True):
            assert schemas.decode(RideRequest, key, value) == ride
            assert (key, value) == (schemas.ride_key(ride.ride_id), schemas.encode(ride))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**64), at=st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9998, 1, 1), timezones=st.just(timezone.utc)))
def test_every_record_sent_is_a_valid_ride_request(seed, at):
    for key, value in islice(rides.records(seed, clock=lambda: at), 50):
        ride = schemas.decode(RideRequest, key, value)  # raises on anything the schema refuses
        assert ride.requested_at == at
