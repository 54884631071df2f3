"""email.py: send each confirmed rider one confirmation email, however often Kafka delivers the ride.

Consumes ride_confirmed in group "email". Without SMTP settings each email is written as one
`<ride_id>.eml` file into --outbox; with them (SMTP_HOST, SMTP_PORT, SMTP_USER, SMTP_PASSWORD, SMTP_FROM
or the --smtp-* flags) it goes out through that SMTP server. A password is only sent over TLS (STARTTLS
or port 465), unless --smtp-allow-plain-login says otherwise (a local test server).

Guarantee: at-least-once consumption with an idempotent effect. A SQLite ledger keyed by ride_id records
every email before the batch's offsets are committed, so a ride Kafka delivers again (a restart, a
rebalance, a duplicate from transaction.py's at-least-once mode) is skipped, never emailed twice. The
ledger belongs to one consumer group: its instances share it, another group is refused.

What stops and what is set aside: a failure of one record (it cannot be decoded or rendered, or the mail
server refuses it for good: 5xx to its recipient or to its DATA) sends it to ride_confirmed.dlq with the
reason, and the next ride is emailed. A failure of the infrastructure (Kafka, the disk, an SMTP server
unreachable or answering 4xx after retries) stops the script without committing.

The crash window: the ledger marks a ride 'sending' (committed to SQLite) before delivering and 'sent'
after. A crash between the two leaves 'sending': on replay that ride is delivered again with the same
Message-ID. In the outbox the same file is replaced, so there is exactly one file per ride; over SMTP the
rider may get the email twice (at most one extra email per crash: only the ride in flight), and mail
clients recognise it by its Message-ID. Never losing an email is preferred over never repeating one.
"""

import common.stdlib_email  # noqa: F401  (first: this file's name shadows the stdlib `email` package)

# isort: split
import logging
import os
import smtplib
import sqlite3
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import format_datetime, parseaddr
from pathlib import Path
from uuid import UUID

log = logging.getLogger(__name__)

DEFAULT_FROM = "Rides <rides@rides.example>"
LEDGER_NAME = ".ledger.sqlite3"

# The email trap, part two. With the project root on sys.path, whatever imports the standard library's
# `email` package first (pytest, pydantic, http.client, ...) finds this file and runs it under the name
# "email", in the middle of its own import. The first line of this file has put the real package in
# place; everything else needs Kafka, pydantic and common/, and importing them now would re-enter the
# half-imported module that asked for `email`. So they are imported, and the settings defined, only
# when this file runs as itself: as a script, or loaded by a test under another name.
if __name__ != "email":
    from kafka.consumer.fetcher import ConsumerRecord
    from pydantic import AliasChoices, Field, SecretStr, field_validator

    from common import cli, clients, consume, schemas, topics
    from common.dead_letters import DeadLetters, stop_if_undelivered, where
    from common.settings import ConsumerSettings, GroupId
    from common.shutdown import Shutdown

    class EmailSettings(ConsumerSettings):
        """Kafka settings plus where emails go: an SMTP server if SMTP_HOST is set, else the outbox folder."""

        group_id: GroupId = "email"
        outbox: Path = Field(Path("outbox"), json_schema_extra={"metavar": "DIR"},
                             description="where .eml files go without SMTP settings")
        # Default: inside the outbox, so that whoever empties the outbox forgets the ledger with it.
        ledger: Path | None = Field(None, json_schema_extra={"metavar": "PATH"},
                                    description="SQLite ledger of emailed rides, owned by one consumer group "
                                                f"(default: {LEDGER_NAME} in the outbox)")
        # The SMTP settings are read from the usual SMTP_* variables (aliases after the field's own name).
        smtp_host: str | None = Field(None, min_length=1, validation_alias=AliasChoices("smtp_host", "SMTP_HOST"),
                                      description="SMTP server (default: none: write to the outbox)")
        smtp_port: int = Field(587, ge=1, le=65535, validation_alias=AliasChoices("smtp_port", "SMTP_PORT"),
                               description="SMTP port (465: implicit TLS)")
        smtp_user: str | None = Field(None, validation_alias=AliasChoices("smtp_user", "SMTP_USER"),
                                      description="SMTP login (default: none: no login)")
        smtp_password: SecretStr | None = Field(
            None, validation_alias=AliasChoices("smtp_password", "SMTP_PASSWORD"),
            description="SMTP password (prefer the variable: flags show in ps)")
        smtp_from: str = Field(DEFAULT_FROM, validation_alias=AliasChoices("smtp_from", "SMTP_FROM"),
                               json_schema_extra={"metavar": "ADDRESS"}, description="the emails' sender")
        # Off: a password goes only over TLS. On: also in clear, for a local test server without TLS.
        smtp_allow_plain_login: bool = Field(
            False, validation_alias=AliasChoices("smtp_allow_plain_login", "SMTP_ALLOW_PLAIN_LOGIN"),
            description="log in even where the server offers no TLS, sending the password in clear: for a local "
                        "test server only (default: off)")

        @field_validator("smtp_from")
        @classmethod
        def _an_address(cls, value: str) -> str:
            _, address = parseaddr(value)
            if "@" not in address:
                raise ValueError(f"not an email address: {value!r}")
            return value

        @property
        def ledger_path(self) -> Path:
            return self.ledger or self.outbox / LEDGER_NAME


# ------------------------------------------------------------------------------------ the email itself


def message_id(ride_id: UUID, sender: str) -> str:
    """The same ride always gets the same Message-ID, so a resend is recognisable as the same email."""
    domain = parseaddr(sender)[1].rpartition("@")[2]
    return f"<ride-{ride_id}@{domain}>"


def recipients(message: EmailMessage) -> list[str]:
    """The To addresses as a mail server or client reads them: the header as it is written into the
    email's bytes, parsed back, so that an RFC 2047 encoded word or a comma decoded there counts, not only
    what we meant to write. (The header alone: parsing the whole email back would halve render's speed.)"""
    if message["To"] is None:
        return []
    wire = message.policy.fold_binary("To", message["To"])
    return [a.addr_spec for a in BytesHeaderParser(policy=default_policy).parsebytes(wire)["To"].addresses]


def render(ride: "schemas.RideConfirmed", sender: str = DEFAULT_FROM) -> EmailMessage:
    """The confirmation email for one ride; the same ride renders to the same bytes (no clock, no random).

    Raises PoisonRecord unless the email goes to exactly one recipient, the ride's customer_email.
    """
    eta = max(1, round(ride.pickup_eta_minutes))
    fare = f"{ride.fare:.2f} {ride.currency}"
    greeting = f"Hello {ride.customer_name}," if ride.customer_name else "Hello,"
    msg = EmailMessage()
    msg["Subject"] = f"Your ride is confirmed: driver {ride.driver_id} arrives in about {eta} min"
    msg["From"] = sender
    # An Address object, not a string: a string is parsed as an address *list* (display names, commas).
    msg["To"] = Address(addr_spec=ride.customer_email)
    msg["Date"] = format_datetime(ride.confirmed_at.astimezone(timezone.utc))
    msg["Message-ID"] = message_id(ride.ride_id, sender)
    msg["X-Ride-ID"] = str(ride.ride_id)
    msg.set_content(
        f"{greeting}\n"
        f"\n"
        f"your ride is confirmed.\n"
        f"\n"
        f"  Driver:     {ride.driver_id}\n"
        f"  Pickup in:  about {eta} min\n"
        f"  Pickup:     {ride.pickup.zone} ({ride.pickup.lat:.5f}, {ride.pickup.lon:.5f})\n"
        f"  Drop-off:   {ride.dropoff.zone} ({ride.dropoff.lat:.5f}, {ride.dropoff.lon:.5f})\n"
        f"  Distance:   {ride.distance_km:.1f} km\n"
        f"  Passengers: {ride.passengers}\n"
        f"  Fare:       {fare} (estimate)\n"
        f"\n"
        f"Ride {ride.ride_id}, confirmed {ride.confirmed_at.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC.\n"
        f"Thank you for riding with us.\n"
    )
    if recipients(msg) != [ride.customer_email]:
        raise schemas.PoisonRecord(f"the email would not go to exactly {ride.customer_email!r} alone")
    return msg


# ------------------------------------------------------------------------------------------ the ledger

SENDING = "sending"  # about to be delivered, or delivered just before a crash: "maybe sent"
SENT = "sent"


class Ledger:
    """Which rides were emailed: ride_id -> 'sending' | 'sent', in SQLite, for one consumer group.

    Every change is its own committed transaction, written before the effect it announces ('sending')
    or right after it ('sent'), and always before Kafka's offset commit.

    The ledger records the group that created it. Instances of that group share it (a ride moved to
    another instance by a rebalance is skipped there); another group is refused, since each group gets
    every ride: two groups on one ledger would each skip, or repeat, the other's emails.
    """

    def __init__(self, path: Path, group_id: str) -> None:
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
            raise cli.Fatal(f"the ledger {path} belongs to group {owner!r}, not {group_id!r}: two groups on one "
                            f"ledger would skip or repeat each other's emails; pass another --ledger")

    def status(self, ride_id: UUID) -> str | None:
        row = self._db.execute("SELECT status FROM emails WHERE ride_id = ?", (str(ride_id),)).fetchone()
        return row[0] if row else None

    def _set(self, ride_id: UUID, msg_id: str, status: str) -> None:
        self._db.execute(
            "INSERT INTO emails (ride_id, message_id, status, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (ride_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
            (str(ride_id), msg_id, status, datetime.now(timezone.utc).isoformat()),
        )

    def sending(self, ride_id: UUID, msg_id: str) -> None:
        self._set(ride_id, msg_id, SENDING)

    def sent(self, ride_id: UUID, msg_id: str) -> None:
        self._set(ride_id, msg_id, SENT)

    def forget(self, ride_id: UUID) -> None:
        """For a ride set aside in the dead-letter topic: a replay from there must email it."""
        self._db.execute("DELETE FROM emails WHERE ride_id = ?", (str(ride_id),))

    def close(self) -> None:
        self._db.close()


def read_ledger(path: Path) -> dict[str, str]:
    """ride_id -> status of a ledger file (for tests and people: `sqlite3 outbox/.ledger.sqlite3`)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT ride_id, status FROM emails").fetchall())
    finally:
        db.close()


# ------------------------------------------------------------------------------------------- delivery


def eml_name(ride_id: UUID) -> str:
    return f"{ride_id}.eml"


def write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never half an email: write aside, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Outbox:
    """Delivery without a mail server: one .eml file per ride, replaced (not duplicated) on a resend."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def deliver(self, message: EmailMessage, ride_id: UUID) -> str:
        path = self.directory / eml_name(ride_id)
        write_atomically(path, bytes(message))
        return str(path)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass


class Smtp:
    """Delivery through an SMTP server, over one connection kept open between emails."""

    def __init__(self, settings: "EmailSettings") -> None:
        self.host, self.port = settings.smtp_host or "", settings.smtp_port
        self._user = settings.smtp_user
        self._password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        self._allow_plain_login = settings.smtp_allow_plain_login
        self._conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        if self.port == 465:  # implicit TLS ("SMTPS")
            conn: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=30, context=context)
            tls = True
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=30)
            conn.ehlo()
            tls = conn.has_extn("starttls")
            if tls:
                conn.starttls(context=context)
                conn.ehlo()
        if self._user and not tls and not self._allow_plain_login:
            conn.close()
            raise cli.Fatal(f"the SMTP server {self.host}:{self.port} offers no STARTTLS: not sending the password "
                            f"of {self._user} in clear; use TLS (STARTTLS or port 465), or pass "
                            f"--smtp-allow-plain-login (SMTP_ALLOW_PLAIN_LOGIN=1) for a local test server")
        if self._user:
            conn.login(self._user, self._password or "")
        return conn

    def open(self) -> None:
        """Connect (and log in) now, so that a server that would get the password in clear stops the script
        before it reads a ride; an unreachable one raises SMTPException or OSError (deliveries retry it)."""
        if self._conn is None:
            self._conn = self._connect()

    def deliver(self, message: EmailMessage, ride_id: UUID) -> str:
        self.open()
        assert self._conn is not None
        try:
            # The envelope from the parsed To header render() checked, never from smtplib's own reading.
            self._conn.send_message(message, to_addrs=recipients(message))
        except (smtplib.SMTPException, OSError):
            self.close()  # the next attempt starts on a fresh connection
            raise
        return f"smtp://{self.host}:{self.port}"

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()


class Refused(Exception):
    """The server refused this email for good (5xx): retrying cannot help, the ride is set aside."""


class Stopped(Exception):
    """Asked to stop while waiting to retry a delivery."""


def refused_for_good(error: Exception) -> str | None:
    """Why the server refused this one email for good (5xx to its recipient, or to its DATA), else None.
    A 4xx is temporary, and a refused sender or login is the configuration's: those are retried, then stop."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = list(error.recipients.values())
    elif isinstance(error, smtplib.SMTPDataError):
        codes = [(error.smtp_code, error.smtp_error)]
    else:
        return None
    if not codes or any(code < 500 for code, _ in codes):
        return None
    return "; ".join(f"{code} {text.decode(errors='replace') if isinstance(text, bytes) else text}"
                     for code, text in codes)


def deliver_with_retries(
    deliver: Callable[[EmailMessage, UUID], str],
    message: EmailMessage,
    ride_id: UUID,
    sleep: Callable[[float], bool],
    attempts: int = 4,
    first_delay: float = 1.0,
) -> str:
    """deliver(), retried with backoff (1, 2, 4 s); raises cli.Fatal once every attempt has failed.

    sleep(seconds) returns True when asked to stop meanwhile (Shutdown.sleep), which raises Stopped.
    """
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return deliver(message, ride_id)
        except (smtplib.SMTPException, OSError) as e:
            if why := refused_for_good(e):
                raise Refused(schemas.one_line(f"the mail server refused the email to {message['To']}: {why}")) \
                    from None
            error: Exception = e
        if attempt == attempts:
            raise cli.Fatal(
                f"cannot deliver the email for ride {ride_id} after {attempts} attempts "
                f"({type(error).__name__}: {error}); stopping without committing: it and the rides after it "
                f"are emailed when email.py runs again"
            )
        log.warning("ride %s: delivery failed (%s: %s); retry %d of %d in %.0f s",
                    ride_id, type(error).__name__, error, attempt, attempts - 1, delay)
        if sleep(delay):
            raise Stopped()
        delay *= 2
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------- the loop


@dataclass
class Counts:
    emailed: int = 0             # deliveries made by this run, resends included
    resent: int = 0              # of those: rides the ledger had as 'sending' (maybe sent before a crash)
    duplicates_skipped: int = 0  # rides the ledger had as 'sent': not emailed again
    dead_lettered: int = 0

    def summary(self) -> str:
        return (f"summary: emailed={self.emailed} resent={self.resent} "
                f"duplicates_skipped={self.duplicates_skipped} dead_lettered={self.dead_lettered}")


class Mailer:
    """Emails one record at a time, the ledger deciding whether it must be emailed at all."""

    def __init__(self, ledger: Ledger, transport: Outbox | Smtp, dead_letters: "DeadLetters", sender: str,
                 sleep: Callable[[float], bool]) -> None:
        self.ledger, self.transport, self.dead_letters = ledger, transport, dead_letters
        self.sender, self.sleep = sender, sleep
        self.counts = Counts()
        self.dead_letter_sends: list = []  # this batch's, checked after the flush and before the commit

    def set_aside(self, record: "ConsumerRecord", reason: str, ride_id: UUID | None = None) -> None:
        """A failure of this record alone: to the dead-letter topic, and out of the ledger, so that a
        replay from there emails it."""
        if ride_id is not None:
            self.ledger.forget(ride_id)
        self.dead_letter_sends.append(self.dead_letters.send(record, reason))
        self.counts.dead_lettered += 1

    def handle(self, record: "ConsumerRecord") -> None:
        # Decoding and rendering are pure: any exception of theirs is this record's (record_step), set
        # aside; the ledger, the transport and Kafka are infrastructure, whose failures retry or stop.
        try:
            ride = schemas.record_step("cannot decode", consume.decode, schemas.RideConfirmed, record)
        except schemas.PoisonRecord as e:
            self.set_aside(record, str(e))
            return
        status = self.ledger.status(ride.ride_id)
        if status == SENT:
            self.counts.duplicates_skipped += 1
            log.info("%s: ride %s was already emailed: skipped", where(record), ride.ride_id)
            return
        try:
            message = schemas.record_step("cannot render the email", render, ride, self.sender)
        except schemas.PoisonRecord as e:
            self.set_aside(record, str(e), ride.ride_id)
            return
        if status == SENDING:
            log.warning("%s: ride %s may have been emailed just before a crash: sending it again with the "
                        "same Message-ID %s", where(record), ride.ride_id, message["Message-ID"])
        self.ledger.sending(ride.ride_id, message["Message-ID"])
        try:
            to = deliver_with_retries(self.transport.deliver, message, ride.ride_id, self.sleep)
        except Refused as e:
            self.set_aside(record, str(e), ride.ride_id)
            return
        self.ledger.sent(ride.ride_id, message["Message-ID"])
        self.counts.emailed += 1
        self.counts.resent += status == SENDING
        log.info("%s: emailed ride %s to %s (driver %s, ETA %.0f min, fare %.2f %s) -> %s", where(record),
                 ride.ride_id, ride.customer_email, ride.driver_id, ride.pickup_eta_minutes, ride.fare,
                 ride.currency, to)

    def handle_batch(self, records: "list[ConsumerRecord]", stop_requested: Callable[[], bool]) -> int:
        """Handle records until done or asked to stop; how many were handled (a prefix of the batch)."""
        for i, record in enumerate(records):
            if stop_requested():
                return i
            try:
                self.handle(record)
            except Stopped:
                return i
        return len(records)


def main(argv: list[str] | None = None) -> int:
    settings = cli.load(EmailSettings, argv, __doc__)
    shutdown = Shutdown.on_signals()

    source = settings.topic(topics.RIDE_CONFIRMED)
    transport: Outbox | Smtp = Smtp(settings) if settings.smtp_host else Outbox(settings.outbox)
    try:
        ledger = Ledger(settings.ledger_path, settings.group_id)
    except (OSError, sqlite3.Error) as e:
        raise cli.Fatal(f"cannot open the ledger {settings.ledger_path}: {e}") from None
    try:  # a configuration that cannot work stops here, before a ride is read (cli.Fatal)
        transport.open()
    except (smtplib.SMTPException, OSError) as e:
        log.warning("the SMTP server is not reachable yet (%s: %s); each email retries it", type(e).__name__, e)

    clients.ensure_topics(settings, shutdown, [topics.RIDE_CONFIRMED, topics.dead_letter_topic(topics.RIDE_CONFIRMED)])
    producer = clients.connect(settings, shutdown, lambda: clients.producer(settings, "email-dead-letters"),
                               "dead-letter producer")
    try:
        consumer = clients.connect(
            settings, shutdown,
            lambda: clients.consumer(settings, [source], "email", listener=consume.LogAssignment()), "consumer")
    except BaseException:
        producer.close()
        raise
    mailer = Mailer(ledger, transport, DeadLetters(producer, settings.group_id), settings.smtp_from, shutdown.sleep)
    log.info("emailing confirmed rides from %s (group %s) %s; ledger %s", source, settings.group_id,
             f"through smtp://{settings.smtp_host}:{settings.smtp_port}" if settings.smtp_host
             else f"into {settings.outbox}/", settings.ledger_path)
    try:
        while not shutdown.requested:
            records = consume.poll_batch(consumer)
            if not records:
                continue
            done = mailer.handle_batch(records, lambda: shutdown.requested)
            # The ledger already has every email of the batch; dead letters must be stored before the
            # offsets move past them. Then commit: a crash before this line only replays skipped rides.
            producer.flush()
            stop_if_undelivered(mailer.dead_letter_sends, "email.py")
            if done:
                consume.commit(consumer, records[:done])
    finally:
        # Anything not committed here is in the ledger or not done at all: a restart finishes it.
        clients.close_producer(producer, timeout=2)  # unsent dead letters: their records were not committed
        consumer.close(autocommit=False)
        transport.close()
        ledger.close()
        log.info("%s", mailer.counts.summary())
    return 0


if __name__ == "__main__":
    cli.run(main)
