"""Produce ride requests to ride_details: customers from a seeded pool asking for rides in Manhattan.

Guarantee: a ride counts as requested only once the broker has acknowledged it (acks=all, idempotent
producer), so `acknowledged` in the summary line is exactly what is in ride_details. Same --seed, same
rides (ride ids, customers, places); only the timestamps differ.
"""

from __future__ import annotations

import common.stdlib_email  # noqa: F401  (first: the project's email.py shadows the stdlib `email` package)

# isort: split
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Annotated, NamedTuple

from kafka.errors import KafkaTimeoutError
from pydantic import Field

from common import city, cli, clients, reachability, schemas, topics
from common.schemas import Place, RideRequest
from common.settings import Settings
from common.shutdown import Shutdown

log = logging.getLogger(__name__)

CUSTOMERS = 5000  # the size of the customer pool: repeat customers, as in a real city
# About 2 % of requests ask for a pickup or drop-off outside the service area, so that
# transaction.py has something to reject.
OUTSIDE_FRACTION = 0.02
# Real places beyond the service area's box (New Jersey, Brooklyn, Queens).
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
# Rides sent and not yet acknowledged, at most: a few batches' worth keeps the producer busy, and far
# below what fills its 32 MB buffer.
MAX_IN_FLIGHT = 10_000


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


def random_place(rng: random.Random) -> Place:
    """A point anywhere in the service area, named by its zone."""
    box = city.SERVICE_AREA
    lat = round(rng.uniform(box.south, box.north), 6)
    lon = round(rng.uniform(box.west, box.east), 6)
    return Place(lat=lat, lon=lon, zone=city.zone_of(lat, lon))


def outside_place(rng: random.Random) -> Place:
    _name, lat, lon = rng.choice(OUTSIDE_PLACES)
    # A few hundred metres of jitter, so that not every rejected ride starts at the same spot.
    lat, lon = round(lat + rng.uniform(-0.003, 0.003), 6), round(lon + rng.uniform(-0.003, 0.003), 6)
    return Place(lat=lat, lon=lon, zone=city.zone_of(lat, lon))


def build_ride(rng: random.Random, now: datetime) -> RideRequest:
    """One ride request, every field drawn from rng: the same rng state gives the same ride."""
    ride_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    rider = customer(rng.randrange(CUSTOMERS))
    pickup, dropoff = random_place(rng), random_place(rng)
    if rng.random() < OUTSIDE_FRACTION:
        if rng.random() < 0.5:
            pickup = outside_place(rng)
        else:
            dropoff = outside_place(rng)
    passengers = rng.choices((1, 2, 3, 4), weights=(70, 20, 7, 3))[0]
    return RideRequest(ride_id=ride_id, customer_id=rider.id, customer_email=rider.email,
                       customer_name=rider.name, pickup=pickup,
                       dropoff=dropoff, passengers=passengers, requested_at=now)


def rides(seed: int, clock=lambda: datetime.now(timezone.utc)) -> Iterator[RideRequest]:
    """The endless stream of rides for a seed, stamped with clock() when each is built."""
    rng = random.Random(seed)
    while True:
        yield build_ride(rng, clock())


# ------------------------------------------------------------------------------------ the script


class RidesSettings(Settings):
    count: Annotated[int | None, Field(ge=1, json_schema_extra={"metavar": "N"},
                                       description="stop once N rides are acknowledged by the broker "
                                                   "(default: until stopped)")] = None
    rate: Annotated[float, Field(ge=0, json_schema_extra={"metavar": "R"},
                                 description="rides per second; 0 = as fast as the broker takes them")] = 0.0
    seed: Annotated[int | None, Field(json_schema_extra={"metavar": "S"},
                                      description="same seed, same rides (default: a random seed, logged at "
                                                  "start)")] = None


class Deliveries:
    """Counts what the broker acknowledged. Callbacks run on the producer's I/O thread (or at once, on
    the main thread, when a send has already completed), hence the lock."""

    def __init__(self) -> None:
        self.requested = 0  # sent
        self.acknowledged = 0
        self.failed = 0
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._final = False

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self.requested - self.acknowledged - self.failed

    def final(self) -> int:
        """Stop counting: sends abandoned from now on stay unacknowledged, not failed. Returns how many
        are unacknowledged."""
        with self._lock:
            self._final = True
            return self.requested - self.acknowledged - self.failed

    def sent(self, ride_id: uuid.UUID, future) -> None:
        with self._lock:
            self.requested += 1
        future.add_callback(self._ok).add_errback(self._failed, ride_id)

    def _ok(self, _metadata) -> None:
        with self._lock:
            if self._final:
                return
            self.acknowledged += 1
        self.changed.set()

    def _failed(self, ride_id: uuid.UUID, error: Exception) -> None:
        with self._lock:
            if self._final:
                return
            self.failed += 1
        self.changed.set()
        log.error("ride %s was not acknowledged (%s: %s); it is not counted and another ride replaces it",
                  ride_id, type(error).__name__, error)


def main(argv: list[str] | None = None) -> int:
    settings = cli.load(RidesSettings, argv, __doc__)
    seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**32)

    shutdown = Shutdown.on_signals()
    clients.ensure_topics(settings, shutdown)
    producer = clients.connect(settings, shutdown, lambda: clients.producer(settings, "rides"), "producer")
    topic = settings.topic(topics.RIDE_DETAILS)
    log.info("producing rides to %s: count=%s rate=%s seed=%d", topic, settings.count or "unlimited",
             f"{settings.rate:g}/s" if settings.rate else "max", seed)

    deliveries = Deliveries()
    source = rides(seed)
    started = time.monotonic()
    last_report = started
    try:
        while not shutdown.requested:
            reachability.check(producer)  # one line when Kafka is lost, one when it is back
            if time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                log.info("progress: requested=%d acknowledged=%d failed=%d", deliveries.requested,
                         deliveries.acknowledged, deliveries.failed)
            if settings.count is not None and deliveries.acknowledged + deliveries.in_flight >= settings.count:
                if deliveries.in_flight == 0:
                    break  # count reached: every ride acknowledged
                # All rides needed are on their way: wait for their acks (a failure reopens the loop).
                deliveries.changed.clear()
                if deliveries.in_flight:
                    deliveries.changed.wait(0.2)
                continue
            if deliveries.in_flight >= MAX_IN_FLIGHT:
                # Kafka is slow or away: wait for acks here, where a stop request is heard, rather than
                # in send(), which blocks for up to a minute once the producer's buffer is full.
                deliveries.changed.clear()
                if deliveries.in_flight >= MAX_IN_FLIGHT:
                    deliveries.changed.wait(0.2)
                continue
            if settings.rate:
                # Pace against the start time, not the last send, so that the average rate holds.
                ahead = started + deliveries.requested / settings.rate - time.monotonic()
                if ahead > 0 and shutdown.sleep(ahead):
                    break
            ride = next(source)
            future = producer.send(topic, key=schemas.ride_key(ride.ride_id), value=schemas.encode(ride))
            deliveries.sent(ride.ride_id, future)
    finally:
        # Stop producing, then give the rides on their way a chance to be acknowledged, within the
        # 10 s a stop may take (Kafka may be unreachable: then they are abandoned).
        try:
            producer.flush(timeout=6)
        except KafkaTimeoutError:
            pass
        unacknowledged = deliveries.final()
        clients.close_producer(producer, timeout=1)
        if unacknowledged:
            log.warning("%d rides unacknowledged at exit: Kafka did not confirm storing them, so they may or may "
                        "not be in %s; not counted as acknowledged", unacknowledged, topic)
        elapsed = max(time.monotonic() - started, 1e-9)
        log.info("summary: requested=%d acknowledged=%d failed=%d unacknowledged=%d rate=%.1f/s seconds=%.2f "
                 "seed=%d", deliveries.requested, deliveries.acknowledged, deliveries.failed, unacknowledged,
                 deliveries.acknowledged / elapsed, elapsed, seed)
    return 0


if __name__ == "__main__":
    cli.run(main)
