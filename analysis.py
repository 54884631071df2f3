"""analysis.py: live statistics over confirmed rides (counts, pickup ETAs, fares, busiest zones, rides per minute).

Consumes ride_confirmed in group "analysis" and prints a compact table to stdout every few seconds and at
shutdown.

Guarantee: exact totals across crashes, restarts and replays. The statistics and the offsets of the rides
they include are saved together in one SQLite transaction per batch (--state), and at start (or after a
rebalance) each partition resumes from the offset saved there, not from Kafka's committed offset: what
was counted and what was read can never disagree, even after kill -9. The Kafka commit that follows each
save is only there so that lag monitoring sees the group's progress. Run one instance per state file (a
lock on the file enforces it): the statistics are of the whole topic, so the group is not meant to be
scaled out. A state file belongs to one topic (its name with the prefix, and its Kafka topic id) and one
consumer group; any other is refused, never merged into it.

Rides per minute follow the wall clock: the table shows the minutes up to now, and the saved state keeps
the last day of them (a ride's confirmed_at, set by whoever produced it, can never move that window).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition
from pydantic import Field

from common import cli, clients, consume, schemas, topics
from common.dead_letters import DeadLetters, stop_if_undelivered
from common.settings import ConsumerSettings, GroupId
from common.shutdown import Shutdown

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one instance per state file is then up to the user
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


class AnalysisSettings(ConsumerSettings):
    group_id: GroupId = "analysis"
    state: Path = Field(Path("analysis.db"), json_schema_extra={"metavar": "PATH"},
                        description="SQLite file of the statistics and their offsets")
    every: float = Field(5.0, gt=0, json_schema_extra={"metavar": "SECONDS"},  # printed only when something changed
                         description="print the table this often")
    minutes: int = Field(5, ge=1, le=1440, json_schema_extra={"metavar": "N"},
                         description="one-minute windows in the table")


# ------------------------------------------------------------------------------------------ statistics


@dataclass
class Totals:
    """Rides and their summed ETAs and fares, as integers so that sums are exact in any order."""

    rides: int = 0
    eta_milli: int = 0   # pickup ETAs in thousandths of a minute
    fare_cents: int = 0

    def add(self, eta_milli: int, fare_cents: int) -> None:
        self.rides += 1
        self.eta_milli += eta_milli
        self.fare_cents += fare_cents

    @property
    def mean_eta(self) -> float | None:
        return self.eta_milli / 1000 / self.rides if self.rides else None

    @property
    def mean_fare(self) -> Decimal | None:
        return (Decimal(self.fare_cents) / 100 / self.rides).quantize(Decimal("0.01")) if self.rides else None


@dataclass
class Stats:
    """Running statistics over confirmed rides; fold() adds one, in any order, with the same result."""

    all: Totals = field(default_factory=Totals)
    zones: dict[str, Totals] = field(default_factory=dict)    # by pickup zone
    minutes: dict[str, int] = field(default_factory=dict)     # "YYYY-MM-DD HH:MM" (UTC, confirmed_at) -> rides
    currencies: dict[str, int] = field(default_factory=dict)  # a mean fare means something in one currency
    dead_lettered: int = 0

    def to_json(self) -> str:
        return json.dumps({
            "all": vars(self.all),
            "zones": {z: vars(t) for z, t in self.zones.items()},
            "minutes": self.minutes,
            "currencies": self.currencies,
            "dead_lettered": self.dead_lettered,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Stats:
        d = json.loads(text)
        return cls(
            all=Totals(**d["all"]),
            zones={z: Totals(**t) for z, t in d["zones"].items()},
            minutes=d["minutes"],
            currencies=d["currencies"],
            dead_lettered=d["dead_lettered"],
        )


def minute_of(ride: schemas.RideConfirmed) -> str:
    return _minute(ride.confirmed_at)


def fold(stats: Stats, ride: schemas.RideConfirmed) -> Stats:
    """Add one confirmed ride to the statistics (in place, for speed) and return them. Whatever can fail
    is computed before anything changes: a ride is counted whole or not at all."""
    # The schema allows two decimal places for fares: cents are exact.
    eta_milli, fare_cents, minute = round(ride.pickup_eta_minutes * 1000), int(ride.fare * 100), minute_of(ride)
    stats.all.add(eta_milli, fare_cents)
    stats.zones.setdefault(ride.pickup.zone, Totals()).add(eta_milli, fare_cents)
    stats.minutes[minute] = stats.minutes.get(minute, 0) + 1
    stats.currencies[ride.currency] = stats.currencies.get(ride.currency, 0) + 1
    return stats


# Rides per minute are kept for the last day only (the most --minutes can show): a state file that ran
# for weeks would otherwise carry, and rewrite on every save, one bucket per minute since it started.
RETAINED_MINUTES = 1440
# Buckets up to this many minutes ahead of this machine's clock are kept too: transaction.py stamps
# confirmed_at with its own host's clock, which may run a little ahead of ours.
CLOCK_SKEW_MINUTES = 5


def _minute(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


def prune(stats: Stats, now: datetime, keep: int = RETAINED_MINUTES) -> Stats:
    """Keep only the per-minute buckets of the `keep` minutes up to `now` (plus CLOCK_SKEW_MINUTES ahead),
    in place; called once per batch, before saving. The window follows the clock, never the data: one
    confirmation stamped 9999-12-31 must not push every real minute out of it. Totals are never pruned."""
    oldest = _minute(now - timedelta(minutes=keep - 1))
    newest = _minute(now + timedelta(minutes=CLOCK_SKEW_MINUTES))
    stats.minutes = {m: n for m, n in stats.minutes.items() if oldest <= m <= newest}
    return stats


def _printable(text: str, width: int) -> str:
    """A zone name as one table cell: zone names are free text, and a newline would break the table."""
    return "".join(c if c.isprintable() else "?" for c in text[:width])


def _fare(amount: Decimal | None, currency: str) -> str:
    return "-" if amount is None else f"{amount:.2f}{currency}"


def render(stats: Stats, now: datetime, minutes: int = 5, zones: int = 8) -> str:
    """The table: totals, the busiest pickup zones, and rides per minute over the last `minutes` windows
    ending at `now` (the wall clock, so that an idle pipeline shows zeros and no record moves the window)."""
    currency = f" {next(iter(stats.currencies))}" if len(stats.currencies) == 1 else ""
    eta = "-" if stats.all.mean_eta is None else f"{stats.all.mean_eta:.1f} min"
    fare = _fare(stats.all.mean_fare, currency) if len(stats.currencies) <= 1 else "(several currencies)"
    lines = [f"confirmed rides: {stats.all.rides}   mean pickup ETA: {eta}   mean fare: {fare}"
             + (f"   dead-lettered: {stats.dead_lettered}" if stats.dead_lettered else "")]
    if stats.zones:
        lines.append(f"  {'pickup zone':<20} {'rides':>6} {'share':>6} {'ETA min':>8} {'fare':>9}")
        busiest = sorted(stats.zones.items(), key=lambda zt: (-zt[1].rides, zt[0]))
        for zone, t in busiest[:zones]:
            lines.append(f"  {_printable(zone, 20):<20} {t.rides:>6} {t.rides / stats.all.rides:>6.1%} "
                         f"{t.mean_eta:>8.1f} {_fare(t.mean_fare, ''):>9}")
        if len(busiest) > zones:
            lines.append(f"  ... and {len(busiest) - zones} more zones")
    if stats.all.rides:
        windows = [_minute(now - timedelta(minutes=i)) for i in reversed(range(minutes))]
        lines.append("  rides per minute (UTC): "
                     + "  ".join(f"{w[-5:]} {stats.minutes.get(w, 0)}" for w in windows))
    return "\n".join(lines)


def summary(stats: Stats) -> str:
    eta = "-" if stats.all.mean_eta is None else f"{stats.all.mean_eta:.2f}"
    fare = "-" if stats.all.mean_fare is None else f"{stats.all.mean_fare:.2f}"
    return (f"summary: total={stats.all.rides} zones={len(stats.zones)} mean_eta_min={eta} mean_fare={fare} "
            f"dead_lettered={stats.dead_lettered}")


# --------------------------------------------------------------------------------------- saved state


class State:
    """The statistics and the offsets they include, in one SQLite file, only ever written together."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = _lock(path)  # before SQLite opens it: a second instance must not even read it
        self._db = sqlite3.connect(path, timeout=30)
        # WAL: a save is one append and one fsync (synchronous=FULL, the default: survives power loss too).
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS stats (id INTEGER PRIMARY KEY CHECK (id = 1),"
                             " json TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS offsets (topic TEXT NOT NULL, partition INTEGER NOT NULL,"
                             " next_offset INTEGER NOT NULL, PRIMARY KEY (topic, partition))")
            # Whose statistics these are: one topic (by name and by Kafka's topic id, which changes when a
            # topic is deleted and created again) read by one consumer group. Set once, checked at every start.
            self._db.execute("CREATE TABLE IF NOT EXISTS source (id INTEGER PRIMARY KEY CHECK (id = 1),"
                             " topic TEXT NOT NULL, topic_id TEXT NOT NULL, group_id TEXT NOT NULL)")

    def load(self) -> tuple[Stats, dict[TopicPartition, int]]:
        return _load(self._db)

    def save(self, stats: Stats, offsets: dict[TopicPartition, int]) -> None:
        """One transaction: a crash leaves either the old statistics and offsets, or both new ones."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO stats (id, json) VALUES (1, ?)", (stats.to_json(),))
            self._db.executemany(
                "INSERT OR REPLACE INTO offsets (topic, partition, next_offset) VALUES (?, ?, ?)",
                [(tp.topic, tp.partition, offset) for tp, offset in offsets.items()],
            )

    def bind(self, topic: str, topic_id: str, group_id: str) -> None:
        """Refuse statistics of another source: a renamed topic, another prefix, a topic deleted and created
        again, another cluster or another group. Their totals and offsets would be silently merged."""
        wanted = (topic, topic_id, group_id)
        row = self._db.execute("SELECT topic, topic_id, group_id FROM source WHERE id = 1").fetchone()
        if row is None:  # a new file, or one saved before sources were recorded: its offsets tell
            counted = {t for (t,) in self._db.execute("SELECT DISTINCT topic FROM offsets")} - {topic}
            if counted:
                raise cli.Fatal(f"{self.path} holds statistics of topic {', '.join(sorted(counted))}, not of "
                                f"{topic}; they are never merged: delete the file or pass another --state")
            with self._db:
                self._db.execute("INSERT INTO source (id, topic, topic_id, group_id) VALUES (1, ?, ?, ?)", wanted)
        elif tuple(row) != wanted:
            differs = [f"{name} {new} (not {old}{why})" for name, old, new, why in
                       zip(("topic", "topic id", "group"), row, wanted,
                           ("", ": deleted and created again, or another cluster", ""), strict=True) if old != new]
            raise cli.Fatal(f"{self.path} holds the statistics of topic {row[0]} (topic id {row[1]}) for group "
                            f"{row[2]}, but this run reads {'; '.join(differs)}; they are never merged: "
                            f"delete the file or pass another --state")

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.close()


def _lock(path: Path):
    """Hold an exclusive lock on the state file itself: a second instance would overwrite the first's
    totals. The file itself, so that no lock file can be deleted from under it. flock() locks are apart
    from the POSIX (fcntl) locks SQLite takes on the same file, so they do not disturb it (on local file
    systems: NFS emulates flock() with POSIX locks). Closed only after the database: closing any
    descriptor of a file drops the process's POSIX locks on it, SQLite's included."""
    if fcntl is None:
        return None
    lock = open(path, "ab")  # creates it if need be: SQLite takes an empty file for an empty database
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise cli.Fatal(f"another analysis.py is using {path}; stop it, or pass another --state") from None
    return lock


def _load(db: sqlite3.Connection) -> tuple[Stats, dict[TopicPartition, int]]:
    row = db.execute("SELECT json FROM stats WHERE id = 1").fetchone()
    stats = Stats.from_json(row[0]) if row else Stats()
    offsets = {TopicPartition(t, p): o for t, p, o in db.execute("SELECT topic, partition, next_offset FROM offsets")}
    return stats, offsets


def load_state(path: Path) -> tuple[Stats, dict[TopicPartition, int]]:
    """The saved statistics and offsets of a state file, read-only (for tests, and while analysis.py runs)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _load(db)
    finally:
        db.close()


class ResumeFromState(consume.LogAssignment):
    """Each assigned partition resumes where the saved state says, whatever Kafka has committed."""

    def __init__(self, saved: dict[TopicPartition, int]) -> None:
        self.saved = saved  # the main loop keeps it current after every save
        self.consumer: KafkaConsumer | None = None

    # on_partitions_revoked only logs: the state is saved after every batch, nothing is pending.

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


# ------------------------------------------------------------------------------------------- the loop


def unseen(records: list[ConsumerRecord], saved: dict[TopicPartition, int]) -> list[ConsumerRecord]:
    """The records the saved statistics do not include yet. A rebalance in the middle of a batch can seek
    back to offsets the batch then saved past; those records are already counted."""
    return [r for r in records if r.offset >= saved.get(TopicPartition(r.topic, r.partition), 0)]


def advance(saved: dict[TopicPartition, int], records: list[ConsumerRecord]) -> dict[TopicPartition, int]:
    """The offsets to save after a batch: never backwards."""
    return {tp: max(om.offset, saved.get(tp, 0)) for tp, om in consume.next_offsets(records).items()}


def source_topic_id(admin: KafkaAdminClient, settings: AnalysisSettings) -> str:
    """Create the topics still missing, and return the id of the one analysed (which incarnation it is)."""
    topics.ensure_topics(admin, settings, [topics.RIDE_CONFIRMED, topics.dead_letter_topic(topics.RIDE_CONFIRMED)])
    return str(admin.describe_topics([settings.topic(topics.RIDE_CONFIRMED)])[0]["topic_id"])


def main(argv: list[str] | None = None) -> int:
    settings = cli.load(AnalysisSettings, argv, __doc__)
    shutdown = Shutdown.on_signals()

    source = settings.topic(topics.RIDE_CONFIRMED)
    try:
        state = State(settings.state)
        stats, saved = state.load()
    except (OSError, sqlite3.Error, ValueError, KeyError) as e:
        raise cli.Fatal(f"cannot use the state file {settings.state}: {e}") from None
    try:
        # The whole admin block is retried, not only building the client: the broker can go away between
        # two admin calls just as well.
        topic_id = clients.with_admin(settings, shutdown, lambda admin: source_topic_id(admin, settings), "admin")
        state.bind(source, topic_id, settings.group_id)
        producer = clients.connect(settings, shutdown, lambda: clients.producer(settings, "analysis-dead-letters"),
                                   "dead-letter producer")
    except BaseException:
        state.close()
        raise
    listener = ResumeFromState(saved)
    try:
        consumer = clients.connect(settings, shutdown,
                                   lambda: clients.consumer(settings, [source], "analysis", listener=listener),
                                   "consumer")
    except BaseException:
        producer.close()
        state.close()
        raise
    listener.consumer = consumer
    dead_letters = DeadLetters(producer, settings.group_id)
    log.info("analysing confirmed rides from %s (group %s); state %s: %d rides so far", source,
             settings.group_id, settings.state, stats.all.rides)

    printed = None  # what the last table showed, so that an idle pipeline does not repeat it
    next_print = time.monotonic() + settings.every
    try:
        while not shutdown.requested:
            records = consume.poll_batch(consumer)
            if records:
                sends = []
                for record in unseen(records, saved):
                    # Pure steps: whatever fails belongs to this record, which is set aside.
                    try:
                        ride = consume.decode(schemas.RideConfirmed, record)
                        schemas.record_step("cannot be counted", fold, stats, ride)
                    except schemas.PoisonRecord as e:
                        sends.append(dead_letters.send(record, str(e)))
                        stats.dead_lettered += 1
                # Dead letters first: the offsets saved next move past them.
                producer.flush()
                stop_if_undelivered(sends, "analysis.py", what_is_kept="saving")
                offsets = advance(saved, records)
                state.save(prune(stats, now=datetime.now(timezone.utc)), offsets)
                saved.update(offsets)
                consume.commit(consumer, records)  # for lag monitoring only: the state file is the truth
            if time.monotonic() >= next_print:
                next_print = time.monotonic() + settings.every
                if (stats.all.rides, stats.dead_lettered) != printed:
                    printed = (stats.all.rides, stats.dead_lettered)
                    print(render(stats, datetime.now(timezone.utc), settings.minutes), flush=True)
    finally:
        # No save here: everything counted so far was saved with its batch, and a batch cut short by an
        # error must not be saved half-counted. What is printed is what the state file holds.
        clients.close_producer(producer, timeout=2)  # unsent dead letters: their batch was not saved
        consumer.close(autocommit=False)
        final, _ = state.load()
        state.close()
        print(render(final, datetime.now(timezone.utc), settings.minutes), file=sys.stdout, flush=True)
        log.info("%s", summary(final))
    return 0


if __name__ == "__main__":
    cli.run(main)
