"""The stores consume-and-apply scripts keep beside Kafka (common.apply), in SQLite: what was applied.

- Ledger: which rides an effect was made for (email.py: each email), written before and after each
  effect or once per batch of them, always before the offsets are committed, so that a ride delivered
  again is skipped;
- State: a script's state and the offsets of the records it includes, only ever saved together, so that
  a restart resumes exactly where the state ends (analysis.py's statistics).

Each belongs to one consumer group (and State to one topic): another is refused, never merged.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import IO
from uuid import UUID

from kafka.structs import TopicPartition

from common.errors import Fatal

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one instance per state file is then up to the user
    fcntl = None  # type: ignore[assignment]


SENDING = "sending"  # about to be delivered, or delivered just before a crash: "maybe sent"
SENT = "sent"
_UPSERT = ("INSERT INTO emails (ride_id, message_id, status, updated_at) VALUES (?, ?, ?, ?)"
           " ON CONFLICT (ride_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at")


class Ledger:
    """Which rides were emailed: ride_id -> 'sending' | 'sent', in SQLite, for one consumer group.

    Every change is a committed transaction, written before the effect it announces ('sending') or after
    it ('sent': one email's, or a whole batch's with save_batch()), and always before Kafka's offset
    commit. Which crash window that leaves is the caller's choice (email.py says it per transport).

    The ledger records the group that created it. Instances of that group share it (a ride moved to
    another instance by a rebalance is skipped there); another group is refused, since each group gets
    every ride: two groups on one ledger would each skip, or repeat, the other's emails.
    """

    def __init__(self, path: Path, group_id: str) -> None:
        try:
            self._open(path, group_id)
        except (OSError, sqlite3.Error) as e:
            raise Fatal(f"cannot open the ledger {path}: {e}") from None

    def _open(self, path: Path, group_id: str) -> None:
        self._known: dict[str, str | None] = {}  # ride_id -> status of the last look_up()'s rides
        self._unsaved: dict[UUID, str] = {}  # ride_id -> Message-ID of the rides sent with_batch, not yet written
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, each statement below is one transaction.
        # timeout: another email.py of the group may hold the write lock for a moment.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        # WAL + synchronous=NORMAL: a commit survives a crash of this process (kill -9) without an fsync
        # per email; only an OS crash or power cut may lose the last ones (then they are emailed again).
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS emails ("
            " ride_id TEXT PRIMARY KEY,"
            " message_id TEXT NOT NULL,"
            " status TEXT NOT NULL CHECK (status IN ('sending', 'sent')),"
            " updated_at TEXT NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        # The first group to open the ledger owns it (an older ledger without an owner too).
        self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('group_id', ?)", (group_id,))
        owner = self._db.execute("SELECT value FROM meta WHERE key = 'group_id'").fetchone()[0]
        if owner != group_id:
            self._db.close()
            raise Fatal(f"the ledger {path} belongs to group {owner!r}, not {group_id!r}: two groups on one "
                            f"ledger would skip or repeat each other's emails; pass another --ledger")

    def status(self, ride_id: UUID) -> str | None:
        if ride_id in self._unsaved:
            return SENT
        if (key := str(ride_id)) in self._known:
            return self._known[key]
        row = self._db.execute("SELECT status FROM emails WHERE ride_id = ?", (key,)).fetchone()
        return row[0] if row else None

    def look_up(self, ride_ids: list[str]) -> None:
        """Read these rides' statuses at once (a batch's: one query, not one per email); status() answers
        them from memory, kept current by this ledger's own writes, until the next look_up(). Another instance
        of the group does not write them meanwhile: Kafka moves partitions between batches, not inside one."""
        known: dict[str, str | None] = dict.fromkeys(ride_ids)
        for i in range(0, len(ride_ids), 500):  # SQLite's limit of parameters per statement can be as low as 999
            chunk = ride_ids[i:i + 500]
            known.update(self._db.execute(
                f"SELECT ride_id, status FROM emails WHERE ride_id IN ({', '.join('?' * len(chunk))})", chunk))
        self._known = known

    def _remember(self, ride_id: str, status: str | None) -> None:
        if ride_id in self._known:
            self._known[ride_id] = status

    def _set(self, ride_id: UUID, msg_id: str, status: str) -> None:
        self._db.execute(_UPSERT, (str(ride_id), msg_id, status, datetime.now(timezone.utc).isoformat()))
        self._remember(str(ride_id), status)

    def sending(self, ride_id: UUID, msg_id: str) -> None:
        self._set(ride_id, msg_id, SENDING)

    def sent(self, ride_id: UUID, msg_id: str, with_batch: bool = False) -> None:
        """Mark a ride 'sent' now, or with_batch: with the batch's others when save_batch() writes them all in
        one transaction (status() answers 'sent' meanwhile)."""
        if with_batch:
            self._unsaved[ride_id] = msg_id
        else:
            self._set(ride_id, msg_id, SENT)

    def save_batch(self) -> None:
        """Write the rides marked 'sent' with_batch in one transaction: all of them, or none."""
        if not self._unsaved:
            return
        now = datetime.now(timezone.utc).isoformat()
        with self._db:  # commits the transaction begun below, or rolls it back
            self._db.execute("BEGIN")
            self._db.executemany(_UPSERT, [(str(r), msg_id, SENT, now) for r, msg_id in self._unsaved.items()])
        for ride_id in self._unsaved:
            self._remember(str(ride_id), SENT)
        self._unsaved.clear()

    def forget(self, ride_id: UUID) -> None:
        """For a ride set aside in the dead-letter topic: a replay from there must email it."""
        self._db.execute("DELETE FROM emails WHERE ride_id = ?", (str(ride_id),))
        self._remember(str(ride_id), None)

    def close(self) -> None:
        self._db.close()


def read_ledger(path: Path) -> dict[str, str]:
    """ride_id -> status of a ledger file (for tests and people: `sqlite3 outbox/.ledger.sqlite3`)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT ride_id, status FROM emails").fetchall())
    finally:
        db.close()


class State:
    """A script's state (JSON text) and the offsets of the records it includes, in one SQLite file, only
    ever written together. One process per file: a lock on the file refuses a second one."""

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

    def load(self) -> tuple[str | None, dict[TopicPartition, int]]:
        """The saved state (None before the first save) and its offsets."""
        return _load(self._db)

    def save(self, state: str, offsets: dict[TopicPartition, int]) -> None:
        """One transaction: a crash leaves either the old state and offsets, or both new ones."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO stats (id, json) VALUES (1, ?)", (state,))
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
                raise Fatal(f"{self.path} holds statistics of topic {', '.join(sorted(counted))}, not of "
                            f"{topic}; they are never merged: delete the file or pass another --state")
            with self._db:
                self._db.execute("INSERT INTO source (id, topic, topic_id, group_id) VALUES (1, ?, ?, ?)", wanted)
        elif tuple(row) != wanted:
            differs = [f"{name} {new} (not {old}{why})" for name, old, new, why in
                       zip(("topic", "topic id", "group"), row, wanted,
                           ("", ": deleted and created again, or another cluster", ""), strict=True) if old != new]
            raise Fatal(f"{self.path} holds the statistics of topic {row[0]} (topic id {row[1]}) for group "
                        f"{row[2]}, but this run reads {'; '.join(differs)}; they are never merged: "
                        f"delete the file or pass another --state")

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.close()


def _lock(path: Path) -> IO[bytes] | None:
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
        raise Fatal(f"another analysis.py is using {path}; stop it, or pass another --state") from None
    return lock


def _load(db: sqlite3.Connection) -> tuple[str | None, dict[TopicPartition, int]]:
    row = db.execute("SELECT json FROM stats WHERE id = 1").fetchone()
    stats = row[0] if row else None
    offsets = {TopicPartition(t, p): o for t, p, o in db.execute("SELECT topic, partition, next_offset FROM offsets")}
    return stats, offsets


def load_state(path: Path) -> tuple[str | None, dict[TopicPartition, int]]:
    """The saved state and offsets of a state file, read-only (for tests, and while its script runs)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _load(db)
    finally:
        db.close()
