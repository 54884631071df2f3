"""Confirm ride requests: validate each one, assign a driver, estimate the pickup ETA and the fare.

Consumes ride_details in group "transaction"; publishes each request to ride_confirmed, or to
ride_rejected with the reason when it cannot be served; sets unreadable or invalid records aside in
ride_details.dlq. Run several instances with distinct --instance values to share the partitions.

Guarantee: exactly-once by default. Each batch's outputs (confirmed, rejected, dead letters) and its
consumed offsets are committed in one Kafka transaction, so readers with isolation_level=read_committed
see every request's outcome exactly once, across crashes, restarts, rebalances and broker restarts.
With --guarantee at-least-once, outputs are flushed before the offsets are committed: nothing is lost,
but a crash between the two publishes that batch's outcomes again.
"""

from __future__ import annotations

import common.stdlib_email  # noqa: F401  (first: the project's email.py shadows the stdlib `email` package)

# isort: split
import hashlib
import logging
import math
import re
import time
from collections import Counter
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Literal
from uuid import UUID

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import (
    AuthorizationError,
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
    TransactionCoordinatorFencedError,
    UnsupportedVersionError,
)
from pydantic import Field, model_validator

from common import city, cli, clients, consume, reachability, schemas, topics
from common.changelog import Changelog, Stopped
from common.dead_letters import DeadLetters, where
from common.decided import DecidedRides, home_partition
from common.schemas import Place, PoisonRecord, RideConfirmed, RideRejected, RideRequest, record_step
from common.settings import ConsumerSettings, GroupId
from common.shutdown import Shutdown

log = logging.getLogger(__name__)

DRIVERS = tuple(f"driver-{n:03d}" for n in range(1, 201))
# New York yellow-cab style tariff: a flag drop, then distance and time.
BASE_FARE = Decimal("3.00")
PER_KM = Decimal("1.75")
PER_MINUTE = Decimal("0.50")
CENTS = Decimal("0.01")
MAX_PASSENGERS = 4  # every car in the pool seats four
MIN_TRIP_KM = 0.05  # closer than this, pickup and drop-off are the same place
DRIVER_MAX_KM = 4.0  # the assigned driver is somewhere within this distance of the pickup


# ------------------------------------------------------------------------------------ the domain


def _ride_hash(ride_id: UUID) -> int:
    # A hash, not the UUID's own bits: the spread must not depend on how producers make their ids.
    return int.from_bytes(hashlib.blake2b(ride_id.bytes, digest_size=16).digest(), "big")


def assign_driver(ride_id: UUID) -> str:
    """The driver for a ride: the same ride always gets the same driver, and rides spread evenly."""
    return DRIVERS[_ride_hash(ride_id) % len(DRIVERS)]


def driver_position(ride_id: UUID, pickup: Place) -> tuple[float, float]:
    """Where the assigned driver is when the ride is confirmed: deterministic, 0-4 km from the pickup."""
    h = _ride_hash(ride_id) >> 64  # bits independent of the driver choice
    bearing = (h & 0xFFFF) / 0x10000 * 2 * math.pi
    km = ((h >> 16) & 0xFFFF) / 0x10000 * DRIVER_MAX_KM
    lat = pickup.lat + km * math.cos(bearing) / 111.32
    lon = pickup.lon + km * math.sin(bearing) / (111.32 * math.cos(math.radians(pickup.lat)))
    return lat, lon


def pickup_eta_minutes(km: float) -> float:
    """Minutes for the driver to reach the pickup, at the city's average speed."""
    return round(city.travel_minutes(km), 1)


def fare(trip_km: float) -> Decimal:
    """Base + per km + per minute of the trip at the city's speed, rounded half up to cents."""
    km = Decimal(str(round(trip_km, 3)))
    minutes = Decimal(str(round(city.travel_minutes(trip_km), 2)))
    return (BASE_FARE + PER_KM * km + PER_MINUTE * minutes).quantize(CENTS, rounding=ROUND_HALF_UP)


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
    driver_lat, driver_lon = driver_position(request.ride_id, request.pickup)
    to_pickup = city.distance_km(driver_lat, driver_lon, request.pickup.lat, request.pickup.lon)
    km = trip_km(request)
    fields = request.model_dump()
    for place in ("pickup", "dropoff"):
        fields[place]["zone"] = city.zone_of(fields[place]["lat"], fields[place]["lon"])
    return RideConfirmed(
        **fields,
        driver_id=assign_driver(request.ride_id),
        distance_km=round(km, 3),
        pickup_eta_minutes=pickup_eta_minutes(to_pickup),
        fare=fare(km),
        currency=city.CURRENCY,
        confirmed_at=now,
    )


def reject(request: RideRequest, reason: str, now: datetime) -> RideRejected:
    return RideRejected(ride_id=request.ride_id, customer_id=request.customer_id, reason=reason,
                        rejected_at=now, request=request)


def decide(request: RideRequest, now: datetime) -> RideConfirmed | RideRejected:
    reason = rejection_reason(request)
    return reject(request, reason, now) if reason else confirm(request, now)


def fingerprint(request: RideRequest) -> str:
    """What makes two requests under one ride_id the same request: everything but the time it was sent
    (a client that retries stamps its retry anew; `rides.py --seed S` run twice makes the same rides) and
    the zone names the client typed (the service takes zones from the coordinates)."""
    same = {"requested_at": True, "pickup": {"zone"}, "dropoff": {"zone"}}
    content = request.model_dump_json(exclude=same).encode()
    return hashlib.blake2b(content, digest_size=8).hexdigest()


def repeat_reason(request: RideRequest, decided: str, fingerprint_now: str) -> str | None:
    """None for the same request again (dropped as a duplicate); else why a request reusing a decided
    ride_id is set aside: deciding it would give one ride two outcomes, and its rider no answer."""
    if decided == fingerprint_now:
        return None
    return (f"ride_id {request.ride_id} was already decided for a different request; a new ride needs a new "
            f"ride_id")


# ------------------------------------------------------------------------------------ the script

EXACTLY_ONCE = "exactly-once"
AT_LEAST_ONCE = "at-least-once"
# The producer cannot go on after these: another instance took over its transactional.id, or the
# broker will never allow transactions. Everything else aborts the batch and reads it again.
FENCED_ERRORS = (ProducerFencedError, InvalidProducerEpochError, TransactionCoordinatorFencedError)
FATAL_ERRORS = (*FENCED_ERRORS, AuthorizationError, UnsupportedVersionError)


def caused_by(e: BaseException, errors: tuple[type[BaseException], ...]) -> bool:
    # Once the producer is in its fatal state, kafka-python raises a plain KafkaError that only names
    # the original error in its message ("... in an error state: ProducerFencedError ...").
    return isinstance(e, errors) or any(cls.__name__ in str(e) for cls in errors)


def is_fatal(e: BaseException) -> bool:
    return caused_by(e, FATAL_ERRORS)


STOP_GRACE = 5.0  # seconds a stop request waits for an unfinished batch's outputs before giving up on it


class TransactionSettings(ConsumerSettings):
    group_id: GroupId = "transaction"
    guarantee: Literal["exactly-once", "at-least-once"] = Field(
        EXACTLY_ONCE, description="exactly-once: Kafka transactions; at-least-once: flush, then commit (faster; "
                                  "a crash may publish a batch twice)")
    dedup_hours: Annotated[float, Field(gt=0, le=24 * 30, json_schema_extra={"metavar": "H"},
                                        description="how long a decided ride_id is remembered; a request repeated "
                                                    "later is decided again")] = 24.0
    instance: Annotated[str, Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9._-]+$",
                                   json_schema_extra={"metavar": "ID"},
                                   description="this instance's name, unique among running instances: the "
                                               "transactional.id is <topic prefix><group id>-<ID>; two instances "
                                               "with the same ID fence each other")] = "0"

    @model_validator(mode="after")
    def _changelog_name_is_a_topic_name(self) -> TransactionSettings:
        # The group names transaction.py's changelog topic (common.topics.decided_topic).
        name = self.topic(topics.decided_topic(self.group_id))
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name):
            raise ValueError(f"with this --group-id and --topic-prefix the changelog topic would be {name[:80]!r}: "
                             f"a topic name has at most 249 of A-Z a-z 0-9 . _ -")
        return self

    @property
    def dedup_window_ms(self) -> int:
        return round(self.dedup_hours * 3_600_000)

    @property
    def transactional_id(self) -> str:
        return f"{self.topic_prefix}{self.group_id}-{self.instance}"


class Abandoned(Exception):
    """Asked to stop while a batch could not be finished (Kafka unreachable): nothing of it is committed."""


class Pipeline:
    """The Kafka side of transaction.py: one batch in, its outcomes out, committed as one."""

    def __init__(self, settings: TransactionSettings, shutdown: Shutdown) -> None:
        self.settings = settings
        self.shutdown = shutdown
        self.exactly_once = settings.guarantee == EXACTLY_ONCE
        self.confirmed_topic = settings.topic(topics.RIDE_CONFIRMED)
        self.rejected_topic = settings.topic(topics.RIDE_REJECTED)
        self.totals: Counter[str] = Counter()
        self.in_transaction = False
        self.producer = self._connect_producer()
        self.decided = DecidedRides(settings.dedup_window_ms)
        self.source = settings.topic(topics.RIDE_DETAILS)
        self.changelog = Changelog(settings, self.source, settings.topic(topics.decided_topic(settings.group_id)),
                                   self.decided, shutdown, f"transaction-{settings.instance}")
        self.consumer: KafkaConsumer = clients.connect(
            settings, shutdown,
            lambda: clients.consumer(settings, [self.source], f"transaction-{settings.instance}",
                                     listener=self.changelog),
            "consumer")

    # ------------------------------------------------------------------------------- clients

    def _connect_producer(self) -> KafkaProducer:
        def make() -> KafkaProducer:
            if not self.exactly_once:
                return clients.producer(self.settings, f"transaction-{self.settings.instance}")
            producer = clients.producer(self.settings, f"transaction-{self.settings.instance}",
                                        transactional_id=self.settings.transactional_id)
            try:
                # Fences an earlier producer with this transactional.id (a crashed run of this instance)
                # and aborts the transaction it left open, so its half-done batch is never seen.
                producer.init_transactions()
            except BaseException:
                producer.close(timeout=0)
                raise
            return producer

        try:
            producer = clients.connect(self.settings, self.shutdown, make, "producer")
        except KafkaError as e:
            if is_fatal(e):
                raise cli.Fatal(self._fatal_message(e)) from None
            raise
        self.dead_letters = DeadLetters(producer, self.settings.group_id)
        return producer

    def _fatal_message(self, e: Exception) -> str:
        if caused_by(e, FENCED_ERRORS):
            return (f"fenced: another transaction.py runs with transactional.id {self.settings.transactional_id} "
                    f"(--instance {self.settings.instance} in group {self.settings.group_id}); give every running "
                    f"instance its own --instance ({type(e).__name__})")
        return (f"the broker refuses transactions ({type(e).__name__}: {e}); grant this client the transactional "
                f"id {self.settings.transactional_id}, or run with --guarantee at-least-once")

    def _new_producer(self, why: str) -> None:
        log.warning("%s: starting a new producer with transactional.id %s", why, self.settings.transactional_id)
        try:
            clients.close_producer(self.producer, timeout=0)  # what the old one still holds is abandoned
        except KafkaError:
            pass  # it is fenced or broken: that is why it is being replaced
        self.producer = self._connect_producer()

    def close(self) -> None:
        try:
            self.consumer.close(timeout_ms=2000)
            self.changelog.close()
        finally:
            try:
                clients.close_producer(self.producer, timeout=2)
            except KafkaError as e:  # outputs of an abandoned batch: never committed, read again next run
                log.warning("producer closed with records unsent (%s)", e)

    # ------------------------------------------------------------------------------- one batch

    def process(self, records: list[ConsumerRecord], now: datetime) -> tuple[Counter[str], list]:
        """Send the outcome of every record; returns the counts and the sends' futures."""
        counts: Counter[str] = Counter()
        futures = []
        partitions = len(self.consumer.partitions_for_topic(self.source) or ())
        for record in records:
            # Every step here is pure: whatever fails belongs to this record, which is set aside.
            try:
                request = consume.decode(RideRequest, record)
                home = home_partition(record.key, partitions)
                if record.partition != home:
                    raise PoisonRecord(f"in partition {record.partition}, but its key belongs in partition {home} "
                                       f"(Kafka's default partitioner, murmur2): a ride's requests must share a "
                                       f"partition to be decided once")
                request_fp = record_step("cannot be fingerprinted", fingerprint, request)
                decided = self.decided.lookup(record.partition, request.ride_id)
                if decided is not None:
                    reason = repeat_reason(request, decided, request_fp)
                    if reason is None:
                        log.info("%s: ride %s was already decided: duplicate request dropped", where(record),
                                 request.ride_id)
                        counts["duplicates"] += 1
                        continue
                    raise PoisonRecord(reason)
                outcome = record_step("cannot be confirmed", decide, request, now)
            except PoisonRecord as e:
                futures.append(self.dead_letters.send(record, str(e)))
                counts["dead_lettered"] += 1
                continue
            self.decided.stage(record.partition, request.ride_id, request_fp)
            key = schemas.ride_key(request.ride_id)
            if isinstance(outcome, RideRejected):
                log.info("%s: ride %s rejected: %s", where(record), request.ride_id, outcome.reason)
                futures.append(self.producer.send(self.rejected_topic, key=key, value=schemas.encode(outcome)))
                counts["rejected"] += 1
            else:
                futures.append(self.producer.send(self.confirmed_topic, key=key, value=schemas.encode(outcome)))
                counts["confirmed"] += 1
        return counts, futures

    def _await_delivery(self, futures: list) -> None:
        """Wait until the broker has every output of the batch; raise the first failure."""
        stop_by = None
        while True:
            try:
                self.producer.flush(timeout=1.0)  # in steps, to notice a stop request during an outage
                break
            except KafkaTimeoutError:
                reachability.check(self.producer)  # an outage in mid-batch never reaches poll_batch
                if self.shutdown.requested:
                    stop_by = stop_by or time.monotonic() + STOP_GRACE
                    if time.monotonic() > stop_by:
                        raise Abandoned() from None
        for f in futures:
            if f.failed():
                raise f.exception

    def run_batch(self, records: list[ConsumerRecord]) -> None:
        now = datetime.now(timezone.utc)
        if self.exactly_once:
            self.producer.begin_transaction()
            self.in_transaction = True
            counts, futures = self.process(records, now)
            # The batch's decisions join its outputs, in the same transaction: remembered if and only if made.
            futures += self.changelog.send(self.producer)
            # commit_transaction() would send these too, but only a flush says which send failed.
            self._await_delivery(futures)
            # The offsets are committed with the outputs, or not at all: never one without the other.
            # The group metadata lets the broker refuse them if this instance lost the partitions.
            self.producer.send_offsets_to_transaction(consume.next_offsets(records), self.consumer.group_metadata())
            self.producer.commit_transaction()
            self.in_transaction = False
        else:
            counts, futures = self.process(records, now)
            self._await_delivery(futures)  # outputs first ...
            # ... then the decisions (a crash before them repeats outputs, never loses one) ...
            self._await_delivery(self.changelog.send(self.producer))
            consume.commit(self.consumer, records)  # ... then the offsets: at-least-once
        self.decided.commit(int(now.timestamp() * 1000))
        self.totals.update(counts)
        self.totals["batches"] += 1

    def recover(self, records: list[ConsumerRecord], error: KafkaError, started: float) -> None:
        """After a failed batch: abort its transaction and read it again from the committed offsets."""
        # A batch open longer than the transaction timeout (say, across a broker restart) is aborted by
        # the broker, which bumps the producer epoch: this producer then looks fenced, yet no other
        # instance exists, and a new producer recovers. Fenced within the timeout means another instance.
        timed_out = self.exactly_once and \
            time.monotonic() - started >= self.producer.config["transaction_timeout_ms"] / 1000
        if is_fatal(error) and not timed_out:
            raise cli.Fatal(self._fatal_message(error)) from None
        what = f"batch of {len(records)} records from {where(records[0])}" if records else "restoring decided rides"
        log.warning("%s failed (%s: %s): aborting it and reading it again", what, type(error).__name__, error)
        self.totals["aborted"] += 1
        self.decided.discard()  # the batch is read again: its rides are not decided ...
        # ... unless its commit went through after all (an error can hide that): the changelog knows.
        self.changelog.reload({tp.partition for tp in self.consumer.assignment()})
        if self.exactly_once and self.in_transaction:
            self.in_transaction = False
            if is_fatal(error):
                self._new_producer(f"the broker aborted the transaction open for {time.monotonic() - started:.0f} s")
            else:
                try:
                    self.producer.abort_transaction()
                except KafkaError as e:
                    if is_fatal(e) and not timed_out:
                        raise cli.Fatal(self._fatal_message(e)) from None
                    # It cannot abort (e.g. it failed in the middle of a commit): start a new one, whose
                    # init_transactions() settles whatever the old one left open.
                    self._new_producer(f"cannot abort the transaction ({type(e).__name__}: {e})")
        # Never go on from the in-memory position after a failed batch: that would skip its rides.
        delay = 0.5
        while True:
            try:
                consume.rewind(self.consumer)
                return
            except KafkaError as e:
                log.warning("cannot read the committed offsets yet (%s: %s); retrying", type(e).__name__, e)
                if self.shutdown.sleep(delay):
                    raise Abandoned() from None
                delay = min(delay * 2, 5.0)

    def run(self) -> None:
        last_report = time.monotonic()
        failures = 0
        while not self.shutdown.requested:
            records = consume.poll_batch(self.consumer)
            if records or self.changelog.to_restore:
                started = time.monotonic()
                try:
                    self.changelog.restore(self.consumer)  # newly assigned partitions: their decided rides first
                    if records:
                        self.run_batch(records)
                    failures = 0
                except KafkaError as e:
                    self.recover(records, e, started)
                    failures += 1
                    # Back off before trying again: after a broker restart, the consumer needs a heartbeat
                    # or two to learn that it must rejoin its group, and every batch until then fails.
                    if self.shutdown.sleep(min(0.5 * 2 ** (failures - 1), 5.0)):
                        break
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                log.info("progress: confirmed=%d rejected=%d duplicates=%d dead_lettered=%d",
                         self.totals["confirmed"], self.totals["rejected"], self.totals["duplicates"],
                         self.totals["dead_lettered"])
                self.decided.prune(int(time.time() * 1000))


def main(argv: list[str] | None = None) -> int:
    settings = cli.load(TransactionSettings, argv, __doc__)

    shutdown = Shutdown.on_signals()
    clients.ensure_topics(settings, shutdown)
    try:
        clients.with_admin(settings, shutdown, lambda admin: topics.ensure_decided_topic(
            admin, settings, settings.group_id, settings.dedup_window_ms), "the decided rides' changelog topic")
    except ValueError as e:
        raise cli.Fatal(str(e)) from None
    pipeline = Pipeline(settings, shutdown)
    log.info("confirming rides from %s in group %s, %s%s", settings.topic(topics.RIDE_DETAILS),
             settings.group_id, settings.guarantee,
             f" (transactional.id {settings.transactional_id})" if pipeline.exactly_once else "")
    try:
        pipeline.run()
    except (Abandoned, Stopped):
        log.warning("stopped with a batch unfinished: nothing of it was committed; the next run processes it")
    finally:
        pipeline.close()
        t = pipeline.totals
        log.info("summary: confirmed=%d rejected=%d duplicates=%d dead_lettered=%d batches=%d aborted=%d "
                 "guarantee=%s", t["confirmed"], t["rejected"], t["duplicates"], t["dead_lettered"], t["batches"],
                 t["aborted"], settings.guarantee)
    return 0


if __name__ == "__main__":
    cli.run(main)
