"""email.py: send each confirmed rider one confirmation email, however often Kafka delivers the ride.

Consumes ride_confirmed in group "email". Each email is written as `<ride_id>.eml` into --outbox, or, with
SMTP settings (the --smtp-* flags or SMTP_HOST, SMTP_PORT, ...), sent through that server: a password only
over TLS (STARTTLS or port 465) unless --smtp-allow-plain-login says otherwise (a local test server).

Guarantee: at-least-once consumption with an idempotent effect (common/apply.py). A SQLite ledger keyed by
ride_id records the emailed rides before the offsets are committed: a ride Kafka delivers again is skipped.
Crash windows: the outbox marks a batch 'sent' in one transaction once its files are written (save(), before
the commit): a crash before it rewrites at most that batch's files, each replacing itself (same name, same
bytes), never a second email. SMTP marks each email 'sending' before it goes and 'sent' after: a crash
between the two sends that one email again, with the same Message-ID. A ride that cannot be emailed
(undecodable, or refused for good: 5xx) goes to ride_confirmed.dlq with the reason; a failure of Kafka, the
disk or the SMTP server (unreachable, 4xx after retries) stops the script without committing.
"""

import common.stdlib_email  # noqa: F401  (first: this file's name shadows the stdlib `email` package)

# isort: split
import logging
from datetime import timezone
from email.message import EmailMessage
from email.utils import format_datetime
from uuid import UUID

LEDGER_NAME = ".ledger.sqlite3"
EACH_EMAIL_LOGGED_UP_TO = 100  # a bigger batch (catching up) logs its emails at DEBUG: the progress line counts
SUMMARY = ("emailed", "resent", "duplicates_skipped", "dead_lettered")  # the summary line's counts
# rides_processed_total's outcome for each of them (common.metrics)
OUTCOMES = {"emailed": "emailed", "resent": "resent", "duplicates_skipped": "duplicate",
            "dead_lettered": "dead_lettered"}

# The email trap, part two: with the project root on sys.path, whatever imports the stdlib's `email` first
# finds this file and runs it as "email", in the middle of that import. Importing pydantic or common/ then
# would re-enter the half-imported module that asked for it: they are imported only when this file is itself.
if __name__ != "email":
    from pathlib import Path

    from pydantic import Field

    from common import apply, cli, mail, schemas, topics
    from common.dead_letters import where
    from common.mail import DEFAULT_FROM
    from common.settings import ConsumerSettings, GroupId
    from common.stores import SENDING, SENT, Ledger

    log = logging.getLogger(__name__)
    Store = apply.Store

    class EmailSettings(mail.SmtpSettings, ConsumerSettings):
        """Kafka settings plus where emails go: an SMTP server if SMTP_HOST is set, else the outbox folder."""

        group_id: GroupId = "email"
        outbox: Path = Field(Path("outbox"), json_schema_extra={"metavar": "DIR"},
                             description="where .eml files go without SMTP settings")
        # Default: inside the outbox, so that whoever empties the outbox forgets the ledger with it.
        ledger: Path | None = Field(None, json_schema_extra={"metavar": "PATH"}, description=(
            f"SQLite ledger of emailed rides, owned by one consumer group (default: {LEDGER_NAME} in the outbox)"))

        @property
        def ledger_path(self) -> Path:
            return self.ledger or self.outbox / LEDGER_NAME
else:  # imported as the standard library's `email` by mistake (above): nothing below is used
    Store = object  # type: ignore[assignment,misc]


def message_id(ride_id: UUID, sender: str) -> str:
    """The same ride always gets the same Message-ID, so a resend is recognisable as the same email."""
    return f"<ride-{ride_id}@{mail.domain_of(sender)}>"


def render(ride: "schemas.RideConfirmed", sender: str | None = None) -> EmailMessage:
    """The confirmation email for one ride; the same ride renders to the same bytes (no clock, no random).
    Raises PoisonRecord unless the email goes to exactly one recipient, the ride's customer_email."""
    sender = sender or DEFAULT_FROM
    eta = max(1, round(ride.pickup_eta_minutes))
    greeting = f"Hello {ride.customer_name}," if ride.customer_name else "Hello,"
    msg = EmailMessage(policy=mail.POLICY)  # email.policy.default's bytes, at a tenth of its cost
    msg["Subject"] = f"Your ride is confirmed: driver {ride.driver_id} arrives in about {eta} min"
    msg["From"] = mail.as_written("From", sender)  # parsed and folded as default does, once per sender
    msg["To"] = ride.customer_email  # written as given, then read back below as a mail client reads it
    msg["Date"] = format_datetime(ride.confirmed_at.astimezone(timezone.utc))
    msg["Message-ID"] = message_id(ride.ride_id, sender)
    msg["X-Ride-ID"] = str(ride.ride_id)
    msg.set_content(
        f"{greeting}\n\nyour ride is confirmed.\n\n"
        f"  Driver:     {ride.driver_id}\n"
        f"  Pickup in:  about {eta} min\n"
        f"  Pickup:     {ride.pickup.zone} ({ride.pickup.lat:.5f}, {ride.pickup.lon:.5f})\n"
        f"  Drop-off:   {ride.dropoff.zone} ({ride.dropoff.lat:.5f}, {ride.dropoff.lon:.5f})\n"
        f"  Distance:   {ride.distance_km:.1f} km\n"
        f"  Passengers: {ride.passengers}\n"
        f"  Fare:       {ride.fare:.2f} {ride.currency} (estimate)\n\n"
        f"Ride {ride.ride_id}, confirmed {ride.confirmed_at.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC.\n"
        f"Thank you for riding with us.\n"
    )
    if mail.recipients(msg) != [ride.customer_email]:
        raise schemas.PoisonRecord(f"the email would not go to exactly {ride.customer_email!r} alone")
    return msg


class Emails(Store):
    """The loop's store: emails each ride once, the ledger deciding whether it must be emailed at all."""

    script, doing, each = "email.py", "emailing confirmed rides", logging.INFO  # each: an email's log level

    def __init__(self, settings: "EmailSettings", sleep) -> None:
        self.transport = mail.transport_for(settings, settings.outbox)  # first: it may refuse to start (Fatal)
        self.ledger = Ledger(settings.ledger_path, settings.group_id)
        self.sender, self.sleep = settings.smtp_from, sleep
        self.description = f"{self.transport.where}; ledger {settings.ledger_path}"

    def begin(self, records) -> None:
        self.ledger.look_up([r.key.decode(errors="replace") for r in records if r.key])  # key: ride_id (decode checks)
        self.each = logging.INFO if len(records) <= EACH_EMAIL_LOGGED_UP_TO else logging.DEBUG

    def apply(self, record, ride: "schemas.RideConfirmed") -> tuple[str, ...]:
        if (status := self.ledger.status(ride.ride_id)) == SENT:
            log.info("%s: ride %s was already emailed: skipped", where(record), ride.ride_id)
            return ("duplicates_skipped",)
        message = schemas.record_step("cannot render the email", render, ride, self.sender)
        if status == SENDING:
            log.warning("%s: ride %s may have been emailed just before a crash: sending it again (same "
                        "Message-ID)", where(record), ride.ride_id)
        if not self.transport.resend_replaces:  # SMTP marks each email, the outbox a batch in save() (crash windows)
            self.ledger.sending(ride.ride_id, message_id(ride.ride_id, self.sender))
        smtp_metric = self.watch.delivery if self.watch and not self.transport.resend_replaces else None
        to = mail.deliver_with_retries(self.transport.deliver, message, ride.ride_id, self.sleep, tell=smtp_metric)
        self.ledger.sent(ride.ride_id, message_id(ride.ride_id, self.sender), self.transport.resend_replaces)
        log.log(self.each, "%s: emailed ride %s to %s (driver %s, ETA %.0f min, fare %.2f %s) -> %s",
                where(record), ride.ride_id, ride.customer_email, ride.driver_id, ride.pickup_eta_minutes,
                ride.fare, ride.currency, to)
        return ("emailed", "resent") if status == SENDING else ("emailed",)

    def set_aside(self, record, ride: "schemas.RideConfirmed | None", reason: str) -> None:
        if ride is not None:
            self.ledger.forget(ride.ride_id)  # so that a replay from the dead-letter topic emails it

    def save(self, offsets) -> None:
        self.ledger.save_batch()

    def close(self) -> None:
        self.transport.close()
        self.ledger.close()


def main(argv: list[str] | None = None) -> int:
    settings = cli.load(EmailSettings, argv, __doc__)
    return apply.run(settings, topics.RIDE_CONFIRMED, schemas.RideConfirmed, lambda s: Emails(settings, s.sleep),
                     summary=lambda tally, _store: tally.line(*SUMMARY), progress=SUMMARY, stage="emailed",
                     outcomes=OUTCOMES)


if __name__ == "__main__":
    cli.run(main)
