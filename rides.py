"""Produce ride requests to ride_details: customers from a seeded pool asking for rides in Manhattan.

Guarantee: a ride counts as requested only once the broker has acknowledged it (acks=all, idempotent
producer), so `acknowledged` in the summary line is exactly what is in ride_details. Same --seed, same
rides (ride ids, customers, places); only the timestamps differ.
"""

from __future__ import annotations

import common.stdlib_email  # noqa: F401  (first: the project's email.py shadows the stdlib `email` package)

# isort: split
import bisect
import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Annotated, NamedTuple

import pydantic_core
from pydantic import Field

from common import city, cli, produce, topics
from common.schemas import SCHEMA_VERSION, RideRequest
from common.settings import ServiceSettings

CUSTOMERS = 5000  # the size of the customer pool: repeat customers, as in a real city
# About 2 % of requests ask for a pickup or drop-off outside the service area, so that
# transaction.py has something to reject.
OUTSIDE_FRACTION = 0.02
# Real places beyond the service area (New Jersey, Brooklyn, Queens).
OUTSIDE_PLACES = (
    ("Jersey City", 40.7178, -74.0431),
    ("Hoboken", 40.7440, -74.0324),
    ("Newark Airport", 40.6895, -74.1745),
    ("Downtown Brooklyn", 40.6928, -73.9903),
    ("Flushing", 40.7675, -73.8331),
    ("JFK Airport", 40.6413, -73.7781),
)
FIRST_NAMES = ("ada", "ben", "chloe", "dev", "elena", "farid", "grace", "hiro", "ines", "jamal", "kim",
               "lena", "marco", "nora", "omar", "priya", "quinn", "rosa", "sam", "tara", "uma", "victor")
LAST_NAMES = ("garcia", "smith", "chen", "okafor", "novak", "rossi", "kim", "patel", "haddad", "silva",
              "murphy", "cohen", "ivanova", "nguyen", "johnson", "tanaka")
EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
PASSENGERS = (1, 2, 3, 4)
# Their weights 70, 20, 7, 3, accumulated once (rng.choices would add them up again for every ride).
PASSENGERS_CUM_WEIGHTS = (70, 90, 97, 100)


# ------------------------------------------------------------------------------------ the domain


class Customer(NamedTuple):
    id: str
    name: str
    email: str


def customer(n: int) -> Customer:
    """Customer number n of the pool. The same n is always the same person."""
    first = FIRST_NAMES[n % len(FIRST_NAMES)]
    last = LAST_NAMES[(n // len(FIRST_NAMES)) % len(LAST_NAMES)]
    domain = EMAIL_DOMAINS[n % len(EMAIL_DOMAINS)]
    return Customer(f"cust-{n:05d}", f"{first.title()} {last.title()}", f"{first}.{last}.{n}@{domain}")


POOL = tuple(customer(n) for n in range(CUSTOMERS))  # made once: a ride picks one


def random_place(rng: random.Random) -> dict:
    """A point of the service area drawn from the city's demand (Midtown busiest), named by its zone: a Place's
    fields."""
    lat, lon, zone = city.random_point(rng)
    return {"lat": lat, "lon": lon, "zone": zone}


def outside_place(rng: random.Random) -> dict:
    _name, lat, lon = rng.choice(OUTSIDE_PLACES)
    # A few hundred metres of jitter, so that not every rejected ride starts at the same spot.
    lat, lon = round(lat + rng.uniform(-0.003, 0.003), 6), round(lon + rng.uniform(-0.003, 0.003), 6)
    return {"lat": lat, "lon": lon, "zone": city.zone_of(lat, lon)}


def ride_fields(rng: random.Random, now: datetime) -> dict:
    """One ride request's fields, every one drawn from rng: the same rng state gives the same ride."""
    ride_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    rider = POOL[rng.randrange(CUSTOMERS)]
    pickup, dropoff = random_place(rng), random_place(rng)
    if rng.random() < OUTSIDE_FRACTION:
        if rng.random() < 0.5:
            pickup = outside_place(rng)
        else:
            dropoff = outside_place(rng)
    # What rng.choices(PASSENGERS, cum_weights=...) draws, without its per-call overhead (same rides).
    passengers = PASSENGERS[bisect.bisect(PASSENGERS_CUM_WEIGHTS, rng.random() * PASSENGERS_CUM_WEIGHTS[-1])]
    return {"schema_version": SCHEMA_VERSION, "ride_id": ride_id, "customer_id": rider.id,
            "customer_email": rider.email, "customer_name": rider.name, "pickup": pickup, "dropoff": dropoff,
            "passengers": passengers, "requested_at": now}


def build_ride(rng: random.Random, now: datetime) -> RideRequest:
    """One ride request, validated: the same rng state gives the same ride."""
    return RideRequest.model_validate(ride_fields(rng, now))


def record(fields: dict) -> tuple[bytes, bytes]:
    """A ride's (key, value) on the wire: keyed by its ride_id, its fields serialized by pydantic as drawn,
    without building a validated RideRequest to dump (15 us a ride, this and ride_fields 9.5). The very bytes
    schemas.encode writes for build_ride's ride: the unit tests check it, and that they validate."""
    return str(fields["ride_id"]).encode(), pydantic_core.to_json(fields)


def rides(seed: int, clock=lambda: datetime.now(timezone.utc)) -> Iterator[RideRequest]:
    """The endless stream of rides for a seed, stamped with clock() when each is built."""
    rng = random.Random(seed)
    while True:
        yield build_ride(rng, clock())


def records(seed: int, clock=lambda: datetime.now(timezone.utc)) -> Iterator[tuple[bytes, bytes]]:
    """What rides.py sends: the records of rides(seed, clock), one by one."""
    rng = random.Random(seed)
    while True:
        yield record(ride_fields(rng, clock()))


# ------------------------------------------------------------------------------------ the script


class RidesSettings(ServiceSettings):
    count: Annotated[int | None, Field(ge=1, json_schema_extra={"metavar": "N"},
                                       description="stop once N rides are acknowledged by the broker "
                                                   "(default: until stopped)")] = None
    rate: Annotated[float, Field(ge=0, json_schema_extra={"metavar": "R"},
                                 description="rides per second; 0 = as fast as the broker takes them")] = 0.0
    seed: Annotated[int | None, Field(json_schema_extra={"metavar": "S"},
                                      description="same seed, same rides (default: a random seed, logged at "
                                                  "start)")] = None


def main(argv: list[str] | None = None) -> int:
    settings = cli.load(RidesSettings, argv, __doc__)
    seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**32)
    return produce.run(settings, topics.RIDE_DETAILS, records(seed), settings.count, settings.rate, seed)


if __name__ == "__main__":
    cli.run(main)
