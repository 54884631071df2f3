"""Consume-transform-produce (transaction.py's shape of the loop): records in, records out, committed as one.

Per batch: decode each record (or set it aside), drop a ride already decided (fingerprint), call the script's
pure transform(message, now) for the records to publish, then commit outputs and offsets together:

- exactly-once: begin a transaction; send the outputs, the dead letters and the batch's decided rides;
  flush; add the consumed offsets to the transaction (with the group metadata: a fenced or evicted
  instance cannot commit); commit. On a failure: abort (or start a new producer when it cannot abort),
  and read the batch again from the committed offsets.
- at-least-once: send, flush, then commit the offsets. A crash in between publishes the batch again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any

from kafka import KafkaProducer
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

from common import clients, consume, loop, reachability, schemas, topics
from common.changelog import Changelog
from common.dead_letters import DeadLetters, where
from common.decided import DecidedRides, home_partition
from common.errors import Fatal, PoisonRecord, Stopped
from common.metrics import Watch
from common.schemas import Message, record_step
from common.settings import TransformSettings
from common.shutdown import Shutdown

log = logging.getLogger(__name__)

# The producer cannot go on after these: another instance took over its transactional.id, or the
# broker will never allow transactions. Everything else aborts the batch and reads it again.
FENCED_ERRORS = (ProducerFencedError, InvalidProducerEpochError, TransactionCoordinatorFencedError)
FATAL_ERRORS = (*FENCED_ERRORS, AuthorizationError, UnsupportedVersionError)
STOP_GRACE = 5.0  # seconds a stop request waits for an unfinished batch's outputs before giving up on it


def caused_by(e: BaseException, errors: tuple[type[BaseException], ...]) -> bool:
    # Once the producer is in its fatal state, kafka-python raises a plain KafkaError that only names
    # the original error in its message ("... in an error state: ProducerFencedError ...").
    return isinstance(e, errors) or any(cls.__name__ in str(e) for cls in errors)


def is_fatal(e: BaseException) -> bool:
    return caused_by(e, FATAL_ERRORS)


@dataclass(frozen=True)
class Output:
    """One record to publish: to `topic` (a common.topics name; the prefix is added), keyed by its ride_id."""

    topic: str
    message: Message
    counted_as: str              # the summary key it adds one to
    note: str | None = None      # logged at INFO with the input's position (say, why a ride was rejected)


def repeat_reason(message: Any, decided: str, fingerprint: str) -> str | None:
    """None for the same request again (dropped as a duplicate); else why a request reusing a decided
    ride_id is set aside: deciding it would give one ride two outcomes, and its rider no answer."""
    if decided == fingerprint:
        return None
    return (f"ride_id {message.ride_id} was already decided for a different request; a new ride needs a new "
            f"ride_id")


Transform = Callable[[Any, datetime], list[Output]]
Fingerprint = Callable[[Any], str]


class TransformLoop:
    """The Kafka side of consume-transform-produce: one batch in, its outputs out, committed as one."""

    def __init__(self, settings: TransformSettings, shutdown: Shutdown, model: type[Message], transform: Transform,
                 fingerprint: Fingerprint | None, step: str = "cannot be transformed") -> None:
        self.settings, self.shutdown, self.model, self.fingerprint = settings, shutdown, model, fingerprint
        self.transform, self.step = transform, step
        self.exactly_once = settings.guarantee == "exactly-once"
        self.client_id = f"{settings.group_id}-{settings.instance}"
        self.source = settings.topic(topics.RIDE_DETAILS)
        self.tally = loop.Tally()  # committed batches only: what the progress and summary lines report
        self.pending = loop.Tally()  # the batch in progress: added to the tally once it is committed
        self.watch: Watch | None = None  # with --metrics-port (run())
        self.requested: list[tuple[str, datetime]] = []  # the batch's outputs' (stage, requested_at), if watched
        self.in_transaction = False
        self.producer = self._connect_producer()
        self.decided = DecidedRides(settings.dedup_window_ms)
        self.changelog = Changelog(settings, self.source, settings.topic(topics.decided_topic(settings.group_id)),
                                   self.decided, shutdown, self.client_id) if fingerprint else None
        try:
            self.consumer = clients.connect(settings, shutdown, lambda: clients.consumer(
                settings, [self.source], self.client_id, listener=self.changelog or consume.LogAssignment()),
                "consumer")
        except BaseException:  # Kafka gone for good, or a stop: what was opened is closed, nothing is pending
            clients.close_producer(self.producer, timeout=0)
            raise

    # ----------------------------------------------------------------------------------- the producer

    def _connect_producer(self) -> KafkaProducer:
        # What a batch may write to: the pipeline's topics (outputs, dead letters) and the decided rides' changelog.
        names = [*topics.PARTITIONS, *([topics.decided_topic(self.settings.group_id)] if self.fingerprint else [])]
        writes_to = [self.settings.topic(name) for name in names]

        def make() -> KafkaProducer:
            if not self.exactly_once:
                return clients.producer(self.settings, self.client_id, writes_to=writes_to)
            producer = clients.producer(self.settings, self.client_id, transactional_id=self.settings.transactional_id,
                                        writes_to=writes_to)
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
                raise Fatal(self._fatal_message(e)) from None
            raise
        self.dead_letters = DeadLetters(producer, self.settings.group_id)
        return producer

    def _fatal_message(self, e: Exception) -> str:
        s = self.settings
        if caused_by(e, FENCED_ERRORS):
            return (f"fenced: another instance runs with transactional.id {s.transactional_id} (--instance "
                    f"{s.instance} in group {s.group_id}); give every running instance its own --instance "
                    f"({type(e).__name__})")
        return (f"the broker refuses transactions ({type(e).__name__}: {e}); grant this client the transactional "
                f"id {s.transactional_id}, or run with --guarantee at-least-once")

    def _new_producer(self, why: str) -> None:
        log.warning("%s: starting a new producer with transactional.id %s", why, self.settings.transactional_id)
        try:
            clients.close_producer(self.producer, timeout=0)  # what the old one still holds is abandoned
        except KafkaError:
            pass  # it is fenced or broken: that is why it is being replaced
        self.producer = self._connect_producer()

    # ----------------------------------------------------------------------------------- one batch

    def outputs(self, records: list[ConsumerRecord], now: datetime) -> list[Callable[[], Any]]:
        """The sends of every record's outputs (or of its dead letter), made but not started: the caller
        starts them together, with the changelog's, in one go. Sent while the records were processed, the
        producer's I/O thread would add the partitions they go to the transaction in several round trips
        (one each time it ran between two sends), not one: about 10 ms a transaction."""
        sends: list[Callable[[], Any]] = []
        partitions = len(self.consumer.partitions_for_topic(self.source) or ())
        counts: dict[str, int] = {}  # the output topics' partition counts, looked up once a batch
        for record in records:
            try:  # every step here is pure: whatever fails belongs to this record, which is set aside
                message = record_step("cannot decode", consume.decode, self.model, record)
                fingerprint = self._first_time(record, message, partitions) if self.fingerprint else None
                if fingerprint == "":
                    continue
                outs = record_step(self.step, self.transform, message, now)
            except PoisonRecord as e:
                sends.append(partial(self.dead_letters.send, record, str(e)))
                self.pending["dead_lettered"] += 1
                continue
            if fingerprint:
                self.decided.stage(record.partition, message.ride_id, fingerprint)
            for out in outs:
                if out.note:
                    log.info("%s: ride %s %s", where(record), message.ride_id, out.note)
                topic = self.settings.topic(out.topic)
                # record.key is the ride_id's key (consume.decode checked it).
                sends.append(partial(self.producer.send, topic, key=record.key, value=schemas.encode(out.message),
                                     partition=self._home(topic, record, fingerprint, partitions, counts)))
                self.pending[out.counted_as] += 1
                if self.watch is not None and (at := getattr(out.message, "requested_at", None)) is not None:
                    self.requested.append((out.counted_as, at))  # end-to-end latency, once committed
        return sends

    def _home(self, topic: str, record: ConsumerRecord, fingerprint: str | None, partitions: int,
              counts: dict[str, int]) -> int | None:
        """The output's partition when it is known without hashing the key again: a record checked to be in its
        key's home partition (_first_time) has the same home in a topic with as many partitions. None: the
        producer's partitioner (murmur2 in Python, about 4 % of a record's time) decides."""
        if not fingerprint:
            return None
        if topic not in counts:
            counts[topic] = len(self.producer.partitions_for(topic))
        return record.partition if counts[topic] == partitions else None

    def _first_time(self, record: ConsumerRecord, message: Any, partitions: int) -> str:
        """The request's fingerprint if its ride is not decided yet; "" for the same request again (a
        duplicate, dropped); raises PoisonRecord for a different request under a decided ride_id."""
        assert self.fingerprint is not None
        home = home_partition(record.key, partitions)
        if record.partition != home:
            raise PoisonRecord(f"in partition {record.partition}, but its key belongs in partition {home} (Kafka's "
                               f"default partitioner, murmur2): a ride's requests must share a partition to be "
                               f"decided once")
        fingerprint = record_step("cannot be fingerprinted", self.fingerprint, message)
        decided = self.decided.lookup(record.partition, message.ride_id)
        if decided is None:
            return fingerprint
        reason = repeat_reason(message, decided, fingerprint)
        if reason is not None:
            raise PoisonRecord(reason)
        log.info("%s: ride %s was already decided: duplicate request dropped", where(record), message.ride_id)
        self.pending["duplicates"] += 1
        return ""

    def _await_delivery(self, futures: list) -> None:
        """Wait until the broker has every output of the batch; raise the first failure."""

        def flushed(timeout_s: float) -> bool:
            try:
                self.producer.flush(timeout=timeout_s)
                return True
            except KafkaTimeoutError:
                return False

        self._wait(flushed)
        for f in futures:
            if f.failed():
                raise f.exception

    def _transactional(self, request: Callable[[Any], Any]) -> None:
        """One transactional request (the batch's offsets, its commit, an abort) of the producer's transaction
        manager, sent and awaited through _wait. KafkaProducer's own send_offsets_to_transaction(),
        commit_transaction() and abort_transaction() wait for the answer with no timeout: with the broker gone in
        mid-batch they would block until it is back, deaf to a stop request, and the health check would say
        "stuck" instead of "Kafka unreachable". The same calls, by way of the private but pinned (kafka-python
        3.0.12) transaction manager and sender."""
        result = request(self.producer._transaction_manager)
        self.producer._sender.wakeup()
        self._wait(lambda timeout_s: bool(result.wait(timeout_ms=timeout_s * 1000)))  # raises the request's error

    def _wait(self, done: Callable[[float], bool]) -> None:
        """Call done(timeout_s) until it says True, a second at a time: between two steps an outage in mid-batch
        is noticed (poll_batch, which notices the others, does not run meanwhile) and a stop request heard (the
        batch is given up STOP_GRACE s later: Stopped)."""
        stop_by = None
        while not done(1.0):
            reachability.check(self.producer)
            if self.shutdown.requested:
                stop_by = stop_by or time.monotonic() + STOP_GRACE
                if time.monotonic() > stop_by:
                    raise Stopped() from None
        if reachability.said_lost(self.producer):  # in mid-batch, maybe a batch ago: say it is back here, where
            reachability.check(self.producer)     # the consumer never saw it go

    def _changelog(self) -> list:
        return self.changelog.send(self.producer) if self.changelog else []

    def commit(self, records: list[ConsumerRecord]) -> None:
        """Process one batch and commit its outputs and offsets as one (see the module docstring)."""
        now = datetime.now(timezone.utc)
        self.pending.clear()  # what a failed batch counted: it is read again
        self.requested.clear()
        self.dead_letters.committed()
        if self.exactly_once:
            self.producer.begin_transaction()
            self.in_transaction = True
            # The batch's decisions join its outputs, in the same transaction: remembered if and only if made.
            sends = self.outputs(records, now)
            futures = [send() for send in sends] + self._changelog()
            # commit_transaction() would send these too, but only a flush says which send failed.
            self._await_delivery(futures)
            # The offsets are committed with the outputs, or not at all: never one without the other.
            # The group metadata lets the broker refuse them if this instance lost the partitions.
            offsets, group = consume.next_offsets(records), self.consumer.group_metadata()
            self._transactional(lambda manager: manager.send_offsets_to_transaction(offsets, group))
            self._transactional(lambda manager: manager.begin_commit())
            self.in_transaction = False
        else:
            self._await_delivery([send() for send in self.outputs(records, now)])  # outputs first ...
            # ... then the decisions (a crash before them repeats outputs, never loses one) ...
            self._await_delivery(self._changelog())
            consume.commit(self.consumer, records)  # ... then the offsets: at-least-once
        self.decided.commit(int(now.timestamp() * 1000))
        self.tally.update(self.pending)
        self.tally["batches"] += 1
        if self.watch is not None:
            self._watched()

    def _watched(self) -> None:
        """A committed batch, told to the metrics: each output's end-to-end latency, each dead letter's reason."""
        assert self.watch is not None
        by_stage: dict[str, list[datetime]] = {}
        for stage, at in self.requested:
            by_stage.setdefault(stage, []).append(at)
        for stage, times in by_stage.items():
            self.watch.done(stage, times)
        for topic, reason in self.dead_letters.committed():
            self.watch.dead_letter(topic, reason)

    def recover(self, records: list[ConsumerRecord], error: KafkaError, started: float) -> None:
        """After a failed batch: abort its transaction and read it again from the committed offsets."""
        # A batch open longer than the transaction timeout (say, across a broker restart) is aborted by
        # the broker, which bumps the producer epoch: this producer then looks fenced, yet no other
        # instance exists, and a new producer recovers. Fenced within the timeout means another instance.
        timed_out = self.exactly_once and \
            time.monotonic() - started >= self.producer.config["transaction_timeout_ms"] / 1000
        if is_fatal(error) and not timed_out:
            raise Fatal(self._fatal_message(error)) from None
        what = f"batch of {len(records)} records from {where(records[0])}" if records else "restoring decided rides"
        log.warning("%s failed (%s: %s): aborting it and reading it again", what, type(error).__name__, error)
        self.tally["aborted"] += 1
        self.decided.discard()  # the batch is read again: its rides are not decided ...
        if self.changelog:  # ... unless its commit went through after all (an error can hide that): the changelog knows
            self.changelog.reload({tp.partition for tp in self.consumer.assignment()})
        if self.exactly_once and self.in_transaction:
            self.in_transaction = False
            if is_fatal(error):
                self._new_producer(f"the broker aborted the transaction open for {time.monotonic() - started:.0f} s")
            else:
                try:
                    self._transactional(lambda manager: manager.begin_abort())
                except KafkaError as e:
                    if is_fatal(e) and not timed_out:
                        raise Fatal(self._fatal_message(e)) from None
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
                    raise Stopped() from None
                delay = min(delay * 2, 5.0)

    # ----------------------------------------------------------------------------------- for the loop

    failures = 0

    def process(self, records: list[ConsumerRecord]) -> None:
        if not records and not (self.changelog and self.changelog.to_restore):
            return
        started = time.monotonic()
        try:
            if self.changelog:
                self.changelog.restore(self.consumer)  # newly assigned partitions: their decided rides first
            if records:
                self.commit(records)
            self.failures = 0
        except KafkaError as e:
            self.recover(records, e, started)
            self.failures += 1
            # Back off before trying again: after a broker restart, the consumer needs a heartbeat or two to
            # learn that it must rejoin its group, and every batch until then fails.
            if self.shutdown.sleep(min(0.5 * 2 ** (self.failures - 1), 5.0)):
                raise Stopped() from None

    def tick(self) -> None:
        self.decided.prune(int(time.time() * 1000))

    def close(self) -> None:
        try:
            self.consumer.close(timeout_ms=2000)
            if self.changelog:
                self.changelog.close()
        finally:
            try:
                clients.close_producer(self.producer, timeout=2)
            except KafkaError as e:  # outputs of an abandoned batch: never committed, read again next run
                log.warning("producer closed with records unsent (%s)", e)


def run(settings: TransformSettings, model: type[Message], transform: Transform, counted: tuple[str, ...],
        fingerprint: Fingerprint | None = None, doing: str = "transforming records",
        step: str = "cannot be transformed") -> int:
    """Run the loop: consume ride_details, publish transform()'s outputs, until SIGINT/SIGTERM.

    counted: the Output.counted_as keys, in the order the progress and summary lines show them.
    doing: what the start-up line says it does ("confirming rides"); step: the reason a record whose
    transform() fails is set aside with ("cannot be confirmed: ...").
    fingerprint(message): what makes two requests the same request. Given, each ride_id is decided once
    (for settings.dedup_hours): the same request again is dropped, a different one set aside. The rides
    decided are kept per partition (common.decided) in a changelog topic, written in each batch's
    transaction and read back when a partition is assigned (common.changelog).
    """
    shutdown = Shutdown.on_signals()
    clients.ensure_topics(settings, shutdown)
    if fingerprint:
        clients.ensure_decided_topic(settings, shutdown, settings.group_id, settings.dedup_window_ms)
    keys = (*counted, *(("duplicates",) if fingerprint else ()), "dead_lettered")
    watch = loop.watch(settings, settings.group_id)  # before the clients: a port in use stops it with nothing open
    shape: TransformLoop | None = None
    if watch:  # its summary's counts (a duplicate as outcome "duplicate"), at 0 until the loop runs; in
        # exactly-once its transactions (a batch is one)
        def tally() -> loop.Tally:
            return shape.tally if shape else loop.Tally()
        watch.count(tally, {key: "duplicate" if key == "duplicates" else key for key in keys})
        if settings.guarantee == "exactly-once":
            watch.transactions(tally, committed="batches", aborted="aborted")
    try:
        shape = TransformLoop(settings, shutdown, model, transform, fingerprint, step)
    except BaseException:
        if watch:
            watch.stop()
        raise
    shape.watch = watch
    log.info("%s from %s in group %s, %s%s", doing, shape.source, settings.group_id, settings.guarantee,
             f" (transactional.id {settings.transactional_id})" if shape.exactly_once else "")
    return loop.run(shape, shutdown, every=10.0, progress=lambda: shape.tally.line(*keys), watch=watch,
                    summary=lambda: f"{shape.tally.line(*keys, 'batches', 'aborted')} guarantee={settings.guarantee}")
