"""transaction.py's pure side: who drives, when they arrive, what it costs, and what is refused."""

import random
import uuid
from collections import Counter
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from itertools import islice

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rides
import transaction
from common import city, schemas
from common.schemas import Place, RideConfirmed, RideRejected, RideRequest
from tests.unit.strategies import aware_datetimes, emails, identifiers, names, ride_requests

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
TIMES_SQUARE = Place(lat=40.7580, lon=-73.9855, zone="Midtown")
WALL_STREET = Place(lat=40.7069, lon=-74.0113, zone="Financial District")
JERSEY_CITY = Place(lat=40.7178, lon=-74.0431, zone=city.OUTSIDE)


def request(pickup=TIMES_SQUARE, dropoff=WALL_STREET, passengers=1, ride_id=None) -> RideRequest:
    return RideRequest(ride_id=ride_id or uuid.UUID(int=random.Random(0).getrandbits(128), version=4),
                       customer_id="cust-00001", customer_email="ada.garcia.1@example.com",
                       pickup=pickup, dropoff=dropoff, passengers=passengers, requested_at=NOW)


# ------------------------------------------------------------------------------------------ drivers


def test_the_driver_is_from_the_pool_and_the_same_for_the_same_ride():
    ride_id = uuid.uuid4()
    driver = transaction.assign_driver(transaction.ride_hash(ride_id))
    assert driver in transaction.DRIVERS
    assert driver == transaction.assign_driver(transaction.ride_hash(uuid.UUID(str(ride_id))))


@pytest.mark.parametrize("ids", ["random", "sequential"])
def test_rides_spread_evenly_over_the_drivers(ids):
    rng = random.Random(11)
    n = 200 * len(transaction.DRIVERS)
    ride_ids = (uuid.UUID(int=rng.getrandbits(128), version=4) if ids == "random" else uuid.UUID(int=i)
                for i in range(n))
    counts = Counter(transaction.assign_driver(transaction.ride_hash(r)) for r in ride_ids)
    expected = n / len(transaction.DRIVERS)
    assert set(counts) == set(transaction.DRIVERS)  # every driver works
    # 200 rides each on average; the binomial spread is about 14, so +-30 % is far out in the tail.
    assert expected * 0.7 < min(counts.values()) and max(counts.values()) < expected * 1.3
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 300  # 199 degrees of freedom: mean 199, P(chi2 > 300) < 1e-5


def test_the_driver_is_near_the_pickup():
    for i in range(2000):
        ride_id = uuid.UUID(int=random.Random(i).getrandbits(128), version=4)
        lat, lon = transaction.driver_position(transaction.ride_hash(ride_id), TIMES_SQUARE)
        assert city.distance_km(lat, lon, TIMES_SQUARE.lat, TIMES_SQUARE.lon) <= transaction.DRIVER_MAX_KM + 0.01


# --------------------------------------------------------------------------------------- ETA, fare


def test_eta_grows_with_distance():
    etas = [transaction.pickup_eta_minutes(km / 10) for km in range(0, 100)]
    assert etas[0] == 0
    assert all(a <= b for a, b in zip(etas, etas[1:], strict=False))
    assert etas[-1] > etas[0]
    assert transaction.pickup_eta_minutes(city.SPEED_KMH) == 60.0  # one hour for the distance of an hour


def test_fare_is_base_plus_distance_plus_time_in_cents():
    assert transaction.fare(0) == transaction.BASE_FARE
    # 10 km: 3.00 + 17.50 + 0.50 * 33.33 min = 37.165 -> 37.17 (half up)
    assert transaction.fare(10) == Decimal("37.17")
    for km in (0.5, 1.234, 7.77, 25):
        f = transaction.fare(km)
        assert f.as_tuple().exponent == -2
        minutes = Decimal(str(round(city.travel_minutes(km), 2)))
        exact = transaction.BASE_FARE + transaction.PER_KM * Decimal(str(km)) + transaction.PER_MINUTE * minutes
        assert abs(f - exact) <= Decimal("0.005")
    assert transaction.fare(5) < transaction.fare(6)


def decimal_fare(trip_km: float) -> Decimal:
    # The tariff in Decimal arithmetic, as first written: transaction.fare must give exactly this.
    km = Decimal(str(round(trip_km, 3)))
    minutes = Decimal(str(round(city.travel_minutes(trip_km), 2)))
    total = transaction.BASE_FARE + transaction.PER_KM * km + transaction.PER_MINUTE * minutes
    return total.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@given(st.floats(0, 500) | st.integers(0, 500_000).map(lambda m: m / 1000))
def test_fare_is_the_decimal_tariff(km):
    f = transaction.fare(km)
    assert (f, f.as_tuple()) == (decimal_fare(km), decimal_fare(km).as_tuple())
    assert str(f) == str(decimal_fare(km))


def test_fare_is_the_decimal_tariff_over_many_distances():
    rng = random.Random(5)
    for km in [n / 1000 for n in range(30_000)] + [rng.uniform(0, 500) for _ in range(30_000)]:
        assert str(transaction.fare(km)) == str(decimal_fare(km)), km


# ---------------------------------------------------------------------------------- confirm, reject


def test_confirm_keeps_the_request_and_adds_driver_eta_and_fare():
    req = request()
    c = transaction.confirm(req, NOW)
    assert isinstance(c, RideConfirmed)
    assert (c.ride_id, c.customer_id, c.customer_email, c.pickup, c.dropoff, c.passengers, c.requested_at) == \
        (req.ride_id, req.customer_id, req.customer_email, req.pickup, req.dropoff, req.passengers, req.requested_at)
    assert c.driver_id == transaction.assign_driver(transaction.ride_hash(req.ride_id))
    assert c.distance_km == pytest.approx(city.distance_km(40.7580, -73.9855, 40.7069, -74.0113), abs=0.001)
    assert c.fare == transaction.fare(c.distance_km)
    assert c.currency == "USD" and c.confirmed_at == NOW
    driver = transaction.driver_position(transaction.ride_hash(req.ride_id), req.pickup)
    to_pickup = city.distance_km(*driver, req.pickup.lat, req.pickup.lon)
    assert c.pickup_eta_minutes == transaction.pickup_eta_minutes(to_pickup)
    # What goes on the wire reads back the same.
    assert schemas.decode(RideConfirmed, schemas.ride_key(c.ride_id), schemas.encode(c)) == c
    assert transaction.confirm(req, NOW) == c  # deterministic


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"pickup": JERSEY_CITY}, "pickup (40.71780, -74.04310) is outside the service area"),
        ({"dropoff": JERSEY_CITY}, "drop-off (40.71780, -74.04310) is outside the service area"),
        ({"passengers": 6}, "6 passengers: cars seat at most 4"),
        ({"dropoff": TIMES_SQUARE}, "pickup and drop-off are the same place"),
    ],
)
def test_unservable_requests_are_rejected_with_the_reason(kwargs, reason):
    req = request(**kwargs)
    assert reason in transaction.rejection_reason(req)
    outcome = transaction.decide(req, NOW)
    assert isinstance(outcome, RideRejected)
    assert reason in outcome.reason
    assert (outcome.ride_id, outcome.customer_id, outcome.request, outcome.rejected_at) == \
        (req.ride_id, req.customer_id, req, NOW)
    assert schemas.decode(RideRejected, schemas.ride_key(req.ride_id), schemas.encode(outcome)) == outcome


def test_servable_request_is_confirmed():
    assert transaction.rejection_reason(request()) is None
    assert isinstance(transaction.decide(request(), NOW), RideConfirmed)


def test_rides_from_rides_py_are_rejected_exactly_when_they_leave_the_service_area():
    for req in islice(rides.rides(3, clock=lambda: NOW), 5000):
        outcome = transaction.decide(req, NOW)
        inside = all(city.in_service_area(p.lat, p.lon) for p in (req.pickup, req.dropoff))
        far_enough = transaction.trip_km(req) >= transaction.MIN_TRIP_KM
        assert isinstance(outcome, RideConfirmed) == (inside and far_enough), outcome


@given(ride_requests)
def test_every_valid_request_gets_a_valid_outcome(req):
    # Whatever a producer sends that passes validation, the outcome is itself a valid message.
    outcome = transaction.decide(req, NOW)
    assert_valid(outcome)


def assert_valid(outcome):
    # Outcomes are built without validating them again: what goes on the wire must validate, read back
    # equal, and be written again to the same bytes.
    value = schemas.encode(outcome)
    validated = schemas.decode(type(outcome), schemas.ride_key(outcome.ride_id), value)
    assert validated == outcome
    assert schemas.encode(validated) == value


# Anywhere in the service area, with seats for them: requests that are confirmed (or too short a trip). A point
# of some zone's box, kept if it is in the service area (most are; the service area's own box is mostly water).
servable_points = st.sampled_from(city.ZONES).flatmap(
    lambda z: st.tuples(st.floats(z.box.south, z.box.north), st.floats(z.box.west, z.box.east))
).filter(lambda point: city.in_service_area(*point))
servable_places = st.builds(lambda point, zone: Place(lat=point[0], lon=point[1], zone=zone),
                            servable_points, st.text(min_size=1, max_size=64))
servable_requests = st.builds(
    RideRequest, ride_id=st.uuids(), customer_id=identifiers, customer_email=emails, customer_name=names,
    pickup=servable_places, dropoff=servable_places, passengers=st.integers(1, transaction.MAX_PASSENGERS),
    requested_at=aware_datetimes)


@given(servable_requests, aware_datetimes)
def test_every_servable_request_gets_a_valid_confirmation(req, now):
    outcome = transaction.decide(req, now)
    assert isinstance(outcome, RideConfirmed) or outcome.reason == "pickup and drop-off are the same place"
    assert_valid(outcome)


# ----------------------------------------------------------------------------------------- plumbing


def test_transactional_id_is_stable_per_instance():
    s = transaction.TransactionSettings(group_id="transaction", topic_prefix="p.", instance="1")
    assert s.transactional_id == "p.transaction-1"
    assert transaction.TransactionSettings(group_id="g").transactional_id == "g-0"


@pytest.mark.parametrize("flags", [["--guarantee", "twice"], ["--instance", "a b"], ["--group-id", ""]])
def test_bad_flags_exit_2(flags):
    with pytest.raises(SystemExit) as e:
        transaction.main(["--bootstrap-servers", "localhost:1", *flags])
    assert e.value.code == 2


def test_confirmed_zones_come_from_the_coordinates_not_from_the_client():
    ride = rides.build_ride(random.Random(7), datetime(2026, 1, 1, tzinfo=timezone.utc))
    forged = ride.model_copy(update={"pickup": ride.pickup.model_copy(update={"zone": "zone-made-up-by-client"})})
    confirmed = transaction.confirm(forged, datetime(2026, 1, 1, 0, 1, tzinfo=timezone.utc))
    assert confirmed.pickup.zone == city.zone_of(ride.pickup.lat, ride.pickup.lon) == ride.pickup.zone
