"""Confirm ride requests: validate each one, assign a driver, estimate the pickup ETA and the fare.

Consumes ride_details in group "transaction"; publishes each request to ride_confirmed, or to
ride_rejected with the reason when it cannot be served; sets unreadable or invalid records aside in
ride_details.dlq. A ride_id is decided once: the same request again is dropped as a duplicate. Run several
instances with distinct --instance values to share the partitions.

Guarantee (common/transform.py): exactly-once by default. Each batch's outputs, dead letters, decided rides
and consumed offsets are committed in one Kafka transaction: readers with isolation_level=read_committed see
every outcome once, across crashes, restarts, rebalances and broker restarts. --guarantee at-least-once
flushes the outputs, then commits the offsets: nothing is lost, but a crash in between publishes them again.
"""

from __future__ import annotations

import common.stdlib_email  # noqa: F401  (first: the project's email.py shadows the stdlib `email` package)

# isort: split
import hashlib
import math
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from common import city, cli, topics, transform
from common.schemas import Place, RideConfirmed, RideRejected, RideRequest
from common.settings import GroupId, TransformSettings
from common.transform import Output

DRIVERS = tuple(f"driver-{n:03d}" for n in range(1, 201))
# New York yellow-cab style tariff: a flag drop, then distance and time.
BASE_FARE = Decimal("3.00")
PER_KM = Decimal("1.75")
PER_MINUTE = Decimal("0.50")
# The same tariff in integer hundred-thousandths of a dollar (what fare() counts in): per ride, metre, 1/100 minute.
PER_RIDE_E5, PER_METRE_E5, PER_CENTIMINUTE_E5 = int(BASE_FARE * 100_000), int(PER_KM * 100), int(PER_MINUTE * 1000)
MAX_PASSENGERS = 4  # every car in the pool seats four
MIN_TRIP_KM = 0.05  # closer than this, pickup and drop-off are the same place
DRIVER_MAX_KM = 4.0  # the assigned driver is somewhere within this distance of the pickup


def ride_hash(ride_id: UUID) -> int:
    """What a ride's driver and their position are drawn from: a hash, not the UUID's own bits (the spread
    must not depend on how producers make their ids)."""
    return int.from_bytes(hashlib.blake2b(ride_id.bytes, digest_size=16).digest(), "big")


def assign_driver(h: int) -> str:
    """The driver for a ride (h: its ride_hash): rides spread evenly over the drivers."""
    return DRIVERS[h % len(DRIVERS)]


def driver_position(h: int, pickup: Place) -> tuple[float, float]:
    """Where the driver of a ride (h: its ride_hash) is when it is confirmed: 0-4 km from the pickup."""
    h >>= 64  # bits independent of the driver choice
    bearing = (h & 0xFFFF) / 0x10000 * 2 * math.pi
    km = ((h >> 16) & 0xFFFF) / 0x10000 * DRIVER_MAX_KM
    lat = pickup.lat + km * math.cos(bearing) / 111.32
    lon = pickup.lon + km * math.sin(bearing) / (111.32 * math.cos(math.radians(pickup.lat)))
    return lat, lon


def pickup_eta_minutes(km: float) -> float:
    """Minutes for the driver to reach the pickup, at the city's average speed."""
    return round(city.travel_minutes(km), 1)


def fare(trip_km: float) -> Decimal:
    """Base + per metre + per hundredth of a minute of the trip at the city's speed, rounded half up to cents.
    In integers, then one Decimal: exact, as Decimal arithmetic throughout is, at half its cost (1.2 us, not 2.2)."""
    metres = round(round(trip_km, 3) * 1000)
    centiminutes = round(round(city.travel_minutes(trip_km), 2) * 100)
    total = PER_RIDE_E5 + PER_METRE_E5 * metres + PER_CENTIMINUTE_E5 * centiminutes
    return Decimal((total + 500) // 1000).scaleb(-2)  # cents, half up


def rejection_reason(request: RideRequest) -> str | None:
    """Why a valid request cannot be served, or None when it can."""
    for name, place in (("pickup", request.pickup), ("drop-off", request.dropoff)):
        if not city.in_service_area(place.lat, place.lon):
            return f"{name} ({place.lat:.5f}, {place.lon:.5f}) is outside the service area ({city.NAME})"
    if request.passengers > MAX_PASSENGERS:
        return f"{request.passengers} passengers: cars seat at most {MAX_PASSENGERS}"
    if trip_km(request) < MIN_TRIP_KM:
        return "pickup and drop-off are the same place"
    return None


def trip_km(request: RideRequest) -> float:
    return city.distance_km(request.pickup.lat, request.pickup.lon, request.dropoff.lat, request.dropoff.lon)


def confirm(request: RideRequest, now: datetime) -> RideConfirmed:
    """The confirmed ride: a driver, the pickup ETA from the driver's distance, and the fare.

    Zones are the service's own, from the coordinates: a zone name typed by the client is not trusted
    (downstream statistics group by it, and a hostile client could invent endless zones).
    """
    h = ride_hash(request.ride_id)
    driver_lat, driver_lon = driver_position(h, request.pickup)
    to_pickup = city.distance_km(driver_lat, driver_lon, request.pickup.lat, request.pickup.lon)
    km = trip_km(request)
    # The request's own (valid) values: its places are taken as they are, not validated again.
    return RideConfirmed(**dict(request.__dict__, pickup=own_zone(request.pickup), dropoff=own_zone(request.dropoff)),
                         driver_id=assign_driver(h), distance_km=round(km, 3), fare=fare(km), currency=city.CURRENCY,
                         pickup_eta_minutes=pickup_eta_minutes(to_pickup), confirmed_at=now)


def own_zone(place: Place) -> Place:
    """The place named by the service's zone for its coordinates (the same place when the client's name agrees)."""
    zone = city.zone_of(place.lat, place.lon)
    return place if place.zone == zone else Place(lat=place.lat, lon=place.lon, zone=zone)


def decide(request: RideRequest, now: datetime) -> RideConfirmed | RideRejected:
    reason = rejection_reason(request)
    if reason:
        return RideRejected(ride_id=request.ride_id, customer_id=request.customer_id, reason=reason,
                            rejected_at=now, request=request)
    return confirm(request, now)


def fingerprint(request: RideRequest) -> str:
    """What makes two requests under one ride_id the same request: everything but the time it was sent
    (a client that retries stamps its retry anew; `rides.py --seed S` run twice makes the same rides) and
    the zone names the client typed (the service takes zones from the coordinates)."""
    content = request.model_dump_json(exclude={"requested_at": True, "pickup": {"zone"}, "dropoff": {"zone"}}).encode()
    return hashlib.blake2b(content, digest_size=8).hexdigest()


def outputs(request: RideRequest, now: datetime) -> list[Output]:
    """What to publish for one request: its confirmation, or its rejection with the reason."""
    outcome = decide(request, now)
    if isinstance(outcome, RideRejected):
        return [Output(topics.RIDE_REJECTED, outcome, "rejected", note=f"rejected: {outcome.reason}")]
    return [Output(topics.RIDE_CONFIRMED, outcome, "confirmed")]


class TransactionSettings(TransformSettings):
    group_id: GroupId = "transaction"


def main(argv: list[str] | None = None) -> int:
    settings = cli.load(TransactionSettings, argv, __doc__)
    return transform.run(settings, RideRequest, outputs, counted=("confirmed", "rejected"), fingerprint=fingerprint,
                         doing="confirming rides", step="cannot be confirmed")


if __name__ == "__main__":
    cli.run(main)
