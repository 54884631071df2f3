"""transaction.py's pure side: who drives, when they arrive, what it costs, and what is refused."""

import random
import uuid
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal
from itertools import islice

import pytest
from hypothesis import given

import rides
import transaction
from common import city, schemas
from common.schemas import Place, RideConfirmed, RideRejected, RideRequest
from tests.unit.strategies import ride_requests

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
TIMES_SQUARE = Place(lat=40.7580, lon=-73.9855, zone="Midtown West")
WALL_STREET = Place(lat=40.7069, lon=-74.0113, zone="Financial District")
JERSEY_CITY = Place(lat=40.7178, lon=-74.0431, zone=city.OUTSIDE)


def request(pickup=TIMES_SQUARE, dropoff=WALL_STREET, passengers=1, ride_id=None) -> RideRequest:
    return RideRequest(ride_id=ride_id or uuid.UUID(int=random.Random(0).getrandbits(128), version=4),
                       customer_id="cust-00001", customer_email="ada.garcia.1@example.com",
                       pickup=pickup, dropoff=dropoff, passengers=passengers, requested_at=NOW)


# ------------------------------------------------------------------------------------------ drivers


def test_the_driver_is_from_the_pool_and_the_same_for_the_same_ride():
    ride_id = uuid.uuid4()
    assert transaction.assign_driver(ride_id) in transaction.DRIVERS
    assert transaction.assign_driver(ride_id) == transaction.assign_driver(uuid.UUID(str(ride_id)))


@pytest.mark.parametrize("ids", ["random", "sequential"])
def test_rides_spread_evenly_over_the_drivers(ids):
    rng = random.Random(11)
    n = 200 * len(transaction.DRIVERS)
    ride_ids = (uuid.UUID(int=rng.getrandbits(128), version=4) if ids == "random" else uuid.UUID(int=i)
                for i in range(n))
    counts = Counter(transaction.assign_driver(r) for r in ride_ids)
    expected = n / len(transaction.DRIVERS)
    assert set(counts) == set(transaction.DRIVERS)  # every driver works
    # 200 rides each on average; the binomial spread is about 14, so +-30 % is far out in the tail.
    assert expected * 0.7 < min(counts.values()) and max(counts.values()) < expected * 1.3
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 300  # 199 degrees of freedom: mean 199, P(chi2 > 300) < 1e-5


def test_the_driver_is_near_the_pickup():
    for i in range(2000):
        ride_id = uuid.UUID(int=random.Random(i).getrandbits(128), version=4)
        lat, lon = transaction.driver_position(ride_id, TIMES_SQUARE)
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


# ---------------------------------------------------------------------------------- confirm, reject


def test_confirm_keeps_the_request_and_adds_driver_eta_and_fare():
    req = request()
    c = transaction.confirm(req, NOW)
    assert isinstance(c, RideConfirmed)
    assert (c.ride_id, c.customer_id, c.customer_email, c.pickup, c.dropoff, c.passengers, c.requested_at) == \
        (req.ride_id, req.customer_id, req.customer_email, req.pickup, req.dropoff, req.passengers, req.requested_at)
    assert c.driver_id == transaction.assign_driver(req.ride_id)
    assert c.distance_km == pytest.approx(city.distance_km(40.7580, -73.9855, 40.7069, -74.0113), abs=0.001)
    assert c.fare == transaction.fare(c.distance_km)
    assert c.currency == "USD" and c.confirmed_at == NOW
    driver = transaction.driver_position(req.ride_id, req.pickup)
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
    model = type(outcome)
    assert schemas.decode(model, schemas.ride_key(req.ride_id), schemas.encode(outcome)) == outcome


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
