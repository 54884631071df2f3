"""Consume-and-apply (email.py's and analysis.py's shape of the loop): each record applied to a store that
remembers what it applied, then the offsets committed.

Per batch: decode each record and hand it to store.apply() (a record it cannot take is set aside in the
dead-letter topic, with the reason); flush the dead letters; store.save(offsets); commit the offsets.
The guarantee is the store's:

- a ledger of effects (email.py): each effect is written down before the offsets are committed (before
  and after making it, or with its batch in save() where making it again only replaces it), so a record
  delivered again (a restart, a rebalance) is skipped: at-least-once consumption, one effect;
- state saved with its offsets (analysis.py): save() writes both in one transaction, and the partitions
  resume from the saved offsets (Store.resume_from), not from Kafka's: what was counted and what was read
  never disagree. The Kafka commit then only shows the group's progress to lag monitoring.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import TopicPartition

from common import clients, consume, loop, stores, topics
from common.dead_letters import DeadLetters, stop_if_undelivered
from common.errors import Fatal, PoisonRecord, Stopped
from common.metrics import Watch
from common.schemas import Message, record_step
from common.settings import ConsumerSettings
from common.shutdown import Shutdown

log = logging.getLogger(__name__)


class Store:
    """What a consume-and-apply script provides; every method but apply() may be left as it is."""

    # Offsets saved with the store's state, per partition: where each assigned partition resumes. None:
    # the store keeps no offsets, the partitions resume from Kafka's committed offsets.
    resume_from: dict[TopicPartition, int] | None = None
    script = "the script"  # for messages: "email.py"
    doing = "applying"     # the start-up line: "<doing> from <topic> (group <group>)<description>"
    description = ""
    watch: Watch | None = None  # the script's metrics, with --metrics-port (set by run(), before the first batch)

    def bind(self, topic: str, topic_id: str, group_id: str) -> None:
        """Called once the source topic exists: a store may refuse another source than the one it has."""

    def begin(self, records: list[ConsumerRecord]) -> None:
        """A batch's records, before the first is applied (email.py reads their ledger entries at once)."""

    def apply(self, record: ConsumerRecord, message: Any) -> tuple[str, ...]:
        """Apply one decoded record; returns the summary keys it counts as. Raises PoisonRecord to set it
        aside (the loop sends the dead letter), Stopped when asked to stop in the middle of it."""
        raise NotImplementedError

    def set_aside(self, record: ConsumerRecord, message: Any | None, reason: str) -> None:
        """A record goes to the dead-letter topic (message: None if it could not be decoded)."""

    def save(self, offsets: dict[TopicPartition, int]) -> None:
        """The batch's records up to these offsets are applied and their dead letters stored."""

    def tick(self) -> None:
        """Every few seconds between batches (analysis.py prints its table)."""

    def snapshot(self, final: bool) -> tuple[str, bytes, bytes] | None:
        """After a saved batch, between batches and once more at the end (`final`): a record to publish, as
        (topic: a common.topics name, key, value), or None. analysis.py publishes its statistics this way."""
        return None

    def close(self) -> None:
        """After the last batch (or a start that failed)."""

    def report(self) -> None:
        """After a run, once closed: what the script shows at the end (analysis.py's last table)."""


FOLDED = ("analysed",)  # what a folded record counts as


class Folded(Store):
    """A store of state folded from every record (analysis.py's statistics), saved with the offsets of the
    records it includes in one SQLite transaction per batch (common.stores.State); the partitions resume
    from those offsets. state_type() is the empty state; fold(state, message) adds one record in place
    (a pure step: what it raises sets the record aside); state.to_json() and state_type.from_json() save
    and load it."""

    def __init__(self, path: Path, state_type: Any, fold: Callable[[Any, Any], Any], what: str = "cannot be folded"):
        self.state_type, self.fold, self.what = state_type, fold, what
        try:
            self.file = stores.State(path)
        except (OSError, sqlite3.Error) as e:
            raise Fatal(f"cannot use the state file {path}: {e}") from None
        try:
            self.state = self.saved()
            self.saved_json: str = self.state.to_json()
            _, self.resume_from = self.file.load()
        except (OSError, sqlite3.Error, ValueError, KeyError) as e:
            self.file.close()
            raise Fatal(f"cannot use the state file {path}: {e}") from None
        except BaseException:
            self.file.close()
            raise
        self.description = f"; state {path}"

    def saved(self) -> Any:
        """The state as the file holds it (what the last completed batch saved)."""
        text, _ = self.file.load()
        return self.state_type.from_json(text) if text else self.state_type()

    def bind(self, topic: str, topic_id: str, group_id: str) -> None:
        self.file.bind(topic, topic_id, group_id)

    def apply(self, record: ConsumerRecord, message: Any) -> tuple[str, ...]:
        record_step(self.what, self.fold, self.state, message)
        return FOLDED

    def save(self, offsets: dict[TopicPartition, int]) -> None:
        self.saved_json = self.state.to_json()  # kept: what was saved last (a batch cut short is not)
        self.file.save(self.saved_json, offsets)
        assert self.resume_from is not None
        self.resume_from.update(offsets)

    def close(self) -> None:
        # No save here: everything folded was saved with its batch, and a batch cut short by an error must
        # not be saved half-folded. The state is now what the file holds.
        try:
            self.state = self.saved()
        finally:
            self.file.close()


class ResumeFromStore(consume.LogAssignment):
    """Each assigned partition resumes where the store's saved offsets say, whatever Kafka has committed."""

    def __init__(self, saved: dict[TopicPartition, int]) -> None:
        self.saved = saved  # the store keeps it current after every save
        self.consumer: KafkaConsumer | None = None

    # on_partitions_revoked only logs: the store is saved after every batch, nothing is pending.

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        # Runs inside poll(), possibly on kafka-python's IO thread: reads only the in-memory copy.
        assert self.consumer is not None
        super().on_partitions_assigned(assigned)
        for tp in sorted(assigned):
            offset = self.saved.get(tp)
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
        if assigned:
            log.info("resuming %s from the saved state", ", ".join(
                f"{tp.topic}[{tp.partition}]@{self.saved.get(tp, 'beginning')}" for tp in sorted(assigned)))


def unseen(records: list[ConsumerRecord], saved: dict[TopicPartition, int]) -> list[ConsumerRecord]:
    """The records the saved state does not include yet. A rebalance in the middle of a batch can seek
    back to offsets the batch then saved past; those records are already applied."""
    return [r for r in records if r.offset >= saved.get(TopicPartition(r.topic, r.partition), 0)]


def advance(saved: dict[TopicPartition, int], records: list[ConsumerRecord]) -> dict[TopicPartition, int]:
    """The offsets to save after a batch: never backwards."""
    return {tp: max(om.offset, saved.get(tp, 0)) for tp, om in consume.next_offsets(records).items()}


class Applier:
    """The per-record rule of consume-and-apply, without Kafka: decode each record and apply it to the store;
    a record that fails in a pure step (decoding, or what the store raises as PoisonRecord) is set aside;
    anything else the store raises is the infrastructure's, and stops the loop before the commit."""

    def __init__(self, model: type[Message], store: Store, dead_letters: DeadLetters,
                 stop_requested: Callable[[], bool], stage: str | None = None) -> None:
        self.model, self.store, self.dead_letters, self.stop_requested = model, store, dead_letters, stop_requested
        self.tally = loop.Tally()
        # With metrics: the requested_at of each record counted as `stage`, for its end-to-end latency.
        self.stage = stage
        self.requested: list[Any] = []

    def handle(self, record: ConsumerRecord) -> FutureRecordMetadata | None:
        """Apply one record; the future of its dead letter if it was set aside."""
        message = None
        try:
            message = record_step("cannot decode", consume.decode, self.model, record)
            if counts := self.store.apply(record, message):
                self.tally.update(counts)
                if self.stage in counts:
                    self.requested.append(message.requested_at)
            return None
        except PoisonRecord as e:
            self.store.set_aside(record, message, str(e))
            self.tally["dead_lettered"] += 1
            return self.dead_letters.send(record, str(e))

    def apply(self, records: list[ConsumerRecord]) -> tuple[int, list[FutureRecordMetadata]]:
        """Apply records until done or asked to stop: how many were handled (a prefix of the batch), and
        the futures of the dead letters sent."""
        sends: list[FutureRecordMetadata] = []
        saved = self.store.resume_from
        self.store.begin(records)
        for i, record in enumerate(records):
            if self.stop_requested():
                return i, sends
            # (topic, partition) finds a TopicPartition key (a named tuple), without building one per record.
            if saved is not None and record.offset < saved.get((record.topic, record.partition), 0):
                continue  # already in the saved state (see unseen())
            try:
                letter = self.handle(record)
            except Stopped:
                return i, sends
            if letter is not None:
                sends.append(letter)
        return len(records), sends


class ApplyLoop:
    """The Kafka side of consume-and-apply: one batch in, applied to the store, then committed."""

    def __init__(self, settings: ConsumerSettings, shutdown: Shutdown, source: str, model: type[Message],
                 store: Store, stage: str | None = None) -> None:
        self.store, self.topic = store, settings.topic
        self.producer = clients.connect(settings, shutdown, lambda: clients.producer(
            settings, f"{settings.group_id}-dead-letters"), "dead-letter producer")
        self.applier = Applier(model, store, DeadLetters(self.producer, settings.group_id), lambda: shutdown.requested,
                               stage=stage if store.watch else None)
        self.tally = self.applier.tally
        listener = consume.LogAssignment() if store.resume_from is None else ResumeFromStore(store.resume_from)
        try:
            self.consumer = clients.connect(settings, shutdown, lambda: clients.consumer(
                settings, [source], settings.group_id, listener=listener), "consumer")
        except BaseException:
            self.producer.close()
            raise
        if isinstance(listener, ResumeFromStore):
            listener.consumer = self.consumer

    def process(self, records: list[ConsumerRecord]) -> None:
        if not records:
            return
        done, sends = self.applier.apply(records)
        commit_in_order(self.producer, sends, self.store, self.consumer, records[:done])
        letters = self.applier.dead_letters.committed()
        if self.store.watch is not None and self.applier.stage is not None:  # the batch is saved and committed
            self.store.watch.done(self.applier.stage, self.applier.requested)
            for topic, reason in letters:
                self.store.watch.dead_letter(topic, reason)
        self.applier.requested.clear()
        self.publish(final=False)

    def publish(self, final: bool) -> None:
        """Send the store's snapshot, if it has one now. Not waited for: it goes with the next batch's flush or
        the close; a lost one is replaced by the next (a snapshot is the whole state, not a change)."""
        if (snapshot := self.store.snapshot(final)) is not None:
            topic, key, value = snapshot
            self.producer.send(self.topic(topic), key=key, value=value)

    def tick(self) -> None:
        self.store.tick()
        self.publish(final=False)

    def close(self) -> None:
        # Anything not committed here is in the store or not done at all: a restart finishes it.
        try:
            self.publish(final=True)
            clients.close_producer(self.producer, timeout=2)  # unsent dead letters: their records were not committed
            self.consumer.close(autocommit=False)
        finally:
            self.store.close()
        self.store.report()


def commit_in_order(producer: KafkaProducer, sends: list[FutureRecordMetadata], store: Store,
                    consumer: KafkaConsumer, done: list[ConsumerRecord]) -> None:
    """After a batch: its dead letters stored first (the offsets must never move past a record that is not
    set aside yet: stop instead), then the store saved, then the offsets committed to Kafka."""
    producer.flush()
    stop_if_undelivered(sends, store.script, "saving or committing")
    if done:
        store.save(advance(store.resume_from or {}, done))
        consume.commit(consumer, done)


def source_topic_id(admin: KafkaAdminClient, settings: ConsumerSettings, source: str) -> str:
    """Create the topics still missing, and return the id of the one read (which incarnation it is)."""
    clients.create_topics(admin, settings, [source, topics.dead_letter_topic(source)])
    name = settings.topic(source)
    found = clients.described(admin, [name])
    if name not in found:
        raise KafkaTimeoutError(f"{name} is not known yet to the broker that answered")
    return str(found[name]["topic_id"])


def run(settings: ConsumerSettings, source: str, model: type[Message], make_store: Callable[[Shutdown], Store],
        summary: Callable[[loop.Tally, Any], str], every: float = 10.0,
        progress: tuple[str, ...] = (), stage: str = "applied", outcomes: dict[str, str] | None = None) -> int:
    """Run the loop: apply every record of `source` (a common.topics name) to the store make_store() opens,
    until SIGINT/SIGTERM. `summary(tally, store)` is the closing line's text; `progress` the keys of a
    progress line every `every` seconds. With --metrics-port: `outcomes` maps the tally's keys to
    rides_processed_total's outcomes (default: `progress`' keys as they are), and a record counted as `stage`
    is done for the end-to-end latency histogram."""
    shutdown = Shutdown.on_signals()
    store = make_store(shutdown)  # first: a store that cannot be opened stops the script before Kafka is asked
    watch, shape = None, None
    try:
        # The whole admin step is retried, not only building the client: the broker can go away between two
        # admin calls just as well.
        topic_id = clients.with_admin(settings, shutdown, lambda admin: source_topic_id(admin, settings, source),
                                      "topics")
        store.bind(settings.topic(source), topic_id, settings.group_id)
        store.watch = watch = loop.watch(settings, settings.group_id)
        if watch:  # the tally's counts, at 0 until the loop runs
            watch.count(lambda: shape.tally if shape else loop.Tally(), outcomes or {key: key for key in progress})
        shape = ApplyLoop(settings, shutdown, settings.topic(source), model, store, stage)
    except BaseException:
        store.close()
        if watch:
            watch.stop()
        raise
    log.info("%s from %s (group %s)%s", store.doing, settings.topic(source), settings.group_id, store.description)
    return loop.run(shape, shutdown, lambda: summary(shape.tally, store), every=every, watch=watch,
                    progress=(lambda: shape.tally.line(*progress)) if progress else None)
