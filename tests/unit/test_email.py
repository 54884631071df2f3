"""email.py without a broker: the email, the outbox, the ledger, the crash window, retries, settings."""

import contextlib
import email.policy
import importlib.util
import logging
import smtplib
import socketserver
import sys
import threading
from datetime import datetime, timezone
from decimal import Decimal
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from kafka.consumer.fetcher import ConsumerRecord
from kafka.future import Future

from common import apply, cli, mail, schemas, stores
from common.dead_letters import REASON, DeadLetters
from common.errors import Stopped
from tests.unit.strategies import ride_confirmations

ROOT = Path(__file__).resolve().parents[2]


def load_email_script():
    """email.py under another name: `import email` is (and must stay) the standard library's package."""
    if "email_script" not in sys.modules:
        spec = importlib.util.spec_from_file_location("email_script", ROOT / "email.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["email_script"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["email_script"]


em = load_email_script()

RIDE_ID = UUID("6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f")


def ride(ride_id: UUID = RIDE_ID, **changes) -> schemas.RideConfirmed:
    fields = dict(
        ride_id=ride_id, customer_id="cust-0042", customer_email="ada@example.com",
        pickup={"lat": 52.52, "lon": 13.405, "zone": "Mitte"},
        dropoff={"lat": 52.4986, "lon": 13.4034, "zone": "Kreuzberg"},
        passengers=2, requested_at=datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc),
        driver_id="drv-007", distance_km=3.4, pickup_eta_minutes=6.6, fare=Decimal("14.80"), currency="EUR",
        confirmed_at=datetime(2026, 3, 1, 8, 0, 2, tzinfo=timezone.utc),
    )
    fields.update(changes)
    return schemas.RideConfirmed.model_validate(fields)


def record(value: bytes | None, key: bytes | None = None, offset: int = 0, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord("p.ride_confirmed", partition, -1, offset, 0, 0, key, value, [], None, -1, -1, -1)


def record_of(r: schemas.RideConfirmed, offset: int = 0) -> ConsumerRecord:
    return record(schemas.encode(r), schemas.ride_key(r.ride_id), offset)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list]] = []

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, key, value, headers))
        return Future().success(None)


class CountingOutbox(mail.Outbox):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.deliveries: list[UUID] = []

    def deliver(self, message, ride_id):
        self.deliveries.append(ride_id)
        return super().deliver(message, ride_id)


def no_sleep(_seconds: float) -> bool:
    return False


class Mailer:
    """email.py's store under the loop's per-record rule (common.apply.Applier), as email.py runs them, with
    a fake producer for the dead letters."""

    def __init__(self, directory: Path, transport=None) -> None:
        self.store = em.Emails(em.EmailSettings(group_id="email", outbox=directory), no_sleep)
        if transport is not None:
            self.store.transport = transport
        self.producer = FakeProducer()
        self.stops = iter(())
        self.applier = apply.Applier(schemas.RideConfirmed, self.store, DeadLetters(self.producer, "email"),
                                     lambda: next(self.stops, False))
        self.ledger, self.transport, self.tally = self.store.ledger, self.store.transport, self.applier.tally

    def handle(self, record: ConsumerRecord) -> None:
        """One record as a batch of its own: applied, then saved (as the loop does before its commit)."""
        self.applier.handle(record)
        self.store.save({})

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def mailer(tmp_path):
    m = Mailer(tmp_path / "outbox", CountingOutbox(tmp_path / "outbox"))
    yield m
    m.close()


def emails_in(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.eml"))


# ------------------------------------------------------------------------------------------ rendering


def test_the_email_has_subject_from_to_date_and_a_message_id_derived_from_the_ride():
    msg = em.render(ride())
    assert msg["To"] == "ada@example.com"
    assert msg["From"] == em.DEFAULT_FROM
    assert "drv-007" in msg["Subject"] and "7 min" in msg["Subject"]
    assert msg["Message-ID"] == f"<ride-{RIDE_ID}@rides.example>"
    assert msg["X-Ride-ID"] == str(RIDE_ID)
    assert msg["Date"] == "Sun, 01 Mar 2026 08:00:02 +0000"


def test_the_body_names_driver_eta_fare_and_both_zones():
    body = em.render(ride()).get_content()
    for expected in ("drv-007", "about 7 min", "14.80 EUR", "Mitte", "Kreuzberg", "3.4 km", str(RIDE_ID)):
        assert expected in body


def test_a_driver_already_there_is_about_a_minute_away_not_zero():
    message = em.render(ride(pickup_eta_minutes=0.0))
    assert "about 1 min" in message["Subject"]
    assert "Pickup in:  about 1 min\n" in message.get_content()
    assert "0.0 min" not in message.get_content()


def test_a_resend_is_byte_for_byte_the_same_email():
    assert bytes(em.render(ride())) == bytes(em.render(ride()))


def test_different_rides_get_different_message_ids():
    assert em.render(ride(uuid4()))["Message-ID"] != em.render(ride(uuid4()))["Message-ID"]


def test_the_message_id_domain_is_the_senders():
    assert em.message_id(RIDE_ID, "Rides Berlin <noreply@rides.berlin>") == f"<ride-{RIDE_ID}@rides.berlin>"
    assert em.render(ride(), "noreply@rides.berlin")["From"] == "noreply@rides.berlin"


@settings(max_examples=60, deadline=None)
@given(ride_confirmations())
def test_every_valid_ride_renders_to_an_email_that_parses_back(r):
    parsed = message_from_bytes(bytes(em.render(r)), policy=email.policy.default)
    assert parsed["To"] == r.customer_email
    assert parsed["Message-ID"] == f"<ride-{r.ride_id}@rides.example>"
    assert r.driver_id in parsed.get_content()


# ------------------------------------------------------------------------------------------- outbox


def test_the_eml_file_is_named_after_the_ride():
    assert mail.eml_name(RIDE_ID) == f"{RIDE_ID}.eml"


def test_write_atomically_replaces_the_file_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "a.eml"
    mail.write_atomically(path, b"first")
    mail.write_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["a.eml"]
    assert path.stat().st_mode & 0o777 == 0o600  # an email is personal data: its owner's alone


def test_write_atomically_writes_everything_when_the_system_takes_a_little_at_a_time(tmp_path, monkeypatch):
    real_write = mail.os.write
    monkeypatch.setattr(mail.os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    mail.write_atomically(tmp_path / "a.eml", b"0123456789" * 50)
    assert (tmp_path / "a.eml").read_bytes() == b"0123456789" * 50


def test_a_failed_write_keeps_the_old_file_whole_and_cleans_up(tmp_path):
    path = tmp_path / "a.eml"
    mail.write_atomically(path, b"first")
    with pytest.raises(TypeError):
        mail.write_atomically(path, "not bytes")  # fails half-way, after the temporary file exists
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.eml"]


def test_the_outbox_holds_one_readable_eml_per_ride(tmp_path):
    outbox = mail.Outbox(tmp_path / "out")
    where = outbox.deliver(em.render(ride()), RIDE_ID)
    assert Path(where) == tmp_path / "out" / f"{RIDE_ID}.eml"
    parsed = message_from_bytes(Path(where).read_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] == f"<ride-{RIDE_ID}@rides.example>"


# ------------------------------------------------------------------------------------------- ledger


def test_the_ledger_goes_from_nothing_to_sending_to_sent_and_survives_a_reopen(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    ledger = stores.Ledger(path, "email")
    assert ledger.status(RIDE_ID) is None
    ledger.sending(RIDE_ID, "<m>")
    assert ledger.status(RIDE_ID) == stores.SENDING
    ledger.sent(RIDE_ID, "<m>")
    ledger.close()
    reopened = stores.Ledger(path, "email")
    assert reopened.status(RIDE_ID) == stores.SENT
    reopened.forget(RIDE_ID)
    assert reopened.status(RIDE_ID) is None
    reopened.close()


def test_read_ledger_lists_every_ride_and_its_status(tmp_path):
    ledger = stores.Ledger(tmp_path / "l.sqlite3", "email")
    a, b = uuid4(), uuid4()
    ledger.sending(a, "<a>")
    ledger.sent(b, "<b>")
    ledger.close()
    assert stores.read_ledger(tmp_path / "l.sqlite3") == {str(a): stores.SENDING, str(b): stores.SENT}


def test_the_ledger_answers_the_status_of_many_rides_at_once(tmp_path):
    ledger = stores.Ledger(tmp_path / "l.sqlite3", "email")
    a, b, unknown = uuid4(), uuid4(), [str(uuid4()) for _ in range(1200)]  # more than one query's parameters
    ledger.sending(a, "<a>")
    ledger.sent(b, "<b>")
    ledger.look_up([*unknown, str(a), "not a ride id", str(b)])
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    assert [ledger.status(a), ledger.status(b), ledger.status(UUID(unknown[-1]))] == [stores.SENDING, stores.SENT, None]
    assert not statements  # answered from the look-up
    ledger.sent(a, "<a>")  # its own writes keep the answers current
    ledger.forget(b)
    assert [ledger.status(a), ledger.status(b)] == [stores.SENT, None]
    ledger.close()


# ------------------------------------------------------------------------------- mailer: the guarantee


def test_a_ride_is_emailed_once_and_recorded_as_sent(mailer, tmp_path):
    mailer.handle(record_of(ride()))
    assert [p.name for p in emails_in(tmp_path / "outbox")] == [f"{RIDE_ID}.eml"]
    assert mailer.ledger.status(RIDE_ID) == stores.SENT
    assert mailer.tally.line(*em.SUMMARY) == "emailed=1 resent=0 duplicates_skipped=0 dead_lettered=0"


def test_a_replayed_ride_is_skipped_not_emailed_again(mailer, tmp_path):
    mailer.handle(record_of(ride(), offset=0))
    mailer.handle(record_of(ride(), offset=0))  # the same record again (a restart before the commit)
    mailer.handle(record_of(ride(), offset=7))  # a duplicate upstream (transaction.py at-least-once)
    assert mailer.transport.deliveries == [RIDE_ID]
    assert len(emails_in(tmp_path / "outbox")) == 1
    assert (mailer.tally["emailed"], mailer.tally["duplicates_skipped"]) == (1, 2)


def test_crash_window_before_the_write_a_sending_ride_is_delivered_on_replay(mailer, tmp_path):
    # A crash after the ledger said 'sending' and before the email existed: the replay must send it.
    mailer.ledger.sending(RIDE_ID, em.message_id(RIDE_ID, em.DEFAULT_FROM))
    mailer.handle(record_of(ride()))
    assert [p.name for p in emails_in(tmp_path / "outbox")] == [f"{RIDE_ID}.eml"]
    assert mailer.ledger.status(RIDE_ID) == stores.SENT
    assert (mailer.tally["emailed"], mailer.tally["resent"]) == (1, 1)


def test_crash_window_after_the_write_the_resend_replaces_the_same_file_with_the_same_email(mailer, tmp_path):
    # A crash after the email was written and before the ledger said 'sent': the replay sends it again,
    # with the same Message-ID, into the same file: still exactly one email for the ride.
    first = mail.Outbox(tmp_path / "outbox").deliver(em.render(ride()), RIDE_ID)
    before = Path(first).read_bytes()
    mailer.ledger.sending(RIDE_ID, em.message_id(RIDE_ID, em.DEFAULT_FROM))
    mailer.handle(record_of(ride()))
    assert emails_in(tmp_path / "outbox") == [Path(first)]
    assert Path(first).read_bytes() == before
    assert mailer.ledger.status(RIDE_ID) == stores.SENT
    assert mailer.tally["resent"] == 1
    mailer.handle(record_of(ride()))  # and once 'sent', never again
    assert mailer.transport.deliveries == [RIDE_ID]


def test_a_poison_record_is_dead_lettered_with_its_reason_and_not_emailed(mailer, tmp_path):
    mailer.handle(record(b"{not json", b"k", offset=3))
    mailer.handle(record_of(ride(), offset=4))
    topic, key, value, headers = mailer.producer.sent[0]
    assert (topic, key, value) == ("p.ride_confirmed.dlq", b"k", b"{not json")
    assert "invalid" in dict(headers)[REASON].decode()
    assert len(emails_in(tmp_path / "outbox")) == 1
    assert mailer.tally["dead_lettered"] == 1


def test_a_key_that_is_not_the_ride_id_is_poison(mailer):
    mailer.handle(record(schemas.encode(ride()), b"someone-else"))
    assert mailer.tally["dead_lettered"] == 1 and mailer.tally["emailed"] == 0


def test_a_recipient_refused_for_good_is_dead_lettered_and_forgotten_by_the_ledger(mailer):
    def refuse(message, ride_id):
        raise smtplib.SMTPRecipientsRefused({"ada@example.com": (550, b"no such user")})

    mailer.transport.deliver = refuse
    mailer.handle(record_of(ride()))
    assert mailer.tally["dead_lettered"] == 1
    assert "refused" in dict(mailer.producer.sent[0][3])[REASON].decode()
    assert mailer.ledger.status(RIDE_ID) is None  # a replay from the dead-letter topic emails it


def test_the_outbox_marks_a_batch_sent_in_one_ledger_transaction_when_the_batch_is_saved(mailer, tmp_path):
    rides = [ride(uuid4()) for _ in range(20)]
    statements: list[str] = []
    mailer.ledger._db.set_trace_callback(statements.append)
    mailer.applier.apply([record_of(r, offset=i) for i, r in enumerate(rides)] + [record_of(rides[0], offset=20)])
    assert not [s for s in statements if not s.startswith("SELECT")]  # nothing written per email
    mailer.store.save({})
    writes = [s.split()[0] for s in statements if not s.startswith("SELECT")]
    assert writes == ["BEGIN"] + ["INSERT"] * 20 + ["COMMIT"]
    assert stores.read_ledger(tmp_path / "outbox" / em.LEDGER_NAME) == {str(r.ride_id): stores.SENT for r in rides}
    assert len(emails_in(tmp_path / "outbox")) == 20 and mailer.tally["duplicates_skipped"] == 1


def test_a_batch_looks_its_rides_up_in_the_ledger_with_one_query_not_one_per_email(mailer):
    rides = [ride(uuid4()) for _ in range(20)]
    mailer.handle(record_of(rides[0]))  # emailed in an earlier batch
    statements: list[str] = []
    mailer.ledger._db.set_trace_callback(statements.append)
    mailer.applier.apply([record_of(r, offset=i) for i, r in enumerate(rides)] + [record_of(rides[1], offset=20)])
    assert len([s for s in statements if s.startswith("SELECT")]) == 1
    assert (mailer.tally["emailed"], mailer.tally["duplicates_skipped"]) == (20, 2)  # rides[0] before, rides[1] twice
    assert mailer.transport.deliveries == [r.ride_id for r in rides]


def test_a_small_batch_logs_each_email_at_info_a_big_one_at_debug(mailer, caplog):
    caplog.set_level(logging.INFO)
    mailer.applier.apply([record_of(ride(uuid4()), offset=i) for i in range(3)])  # a few rides/s: each shown
    mailer.store.save({})
    assert len([m for m in caplog.messages if "emailed ride" in m]) == 3
    caplog.clear()
    big = em.EACH_EMAIL_LOGGED_UP_TO + 1  # catching up: a line per email would cost a tenth of the time
    mailer.applier.apply([record_of(ride(uuid4()), offset=i) for i in range(big)])
    mailer.store.save({})
    assert not [m for m in caplog.messages if "emailed ride" in m]  # the progress line counts them
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    mailer.applier.apply([record_of(ride(uuid4()), offset=i) for i in range(big)])
    assert len([m for m in caplog.messages if "emailed ride" in m]) == big


def test_crash_window_outbox_a_batch_not_saved_is_written_again_into_the_same_files(mailer, tmp_path):
    rides = [ride(uuid4()) for _ in range(5)]
    records = [record_of(r, offset=i) for i, r in enumerate(rides)]
    mailer.applier.apply(records)  # then a crash: the batch was neither saved nor committed
    before = {p.name: p.read_bytes() for p in emails_in(tmp_path / "outbox")}
    mailer.close()
    replay = Mailer(tmp_path / "outbox")
    replay.applier.apply(records)
    replay.store.save({})
    assert {p.name: p.read_bytes() for p in emails_in(tmp_path / "outbox")} == before  # replaced, not added
    assert set(stores.read_ledger(tmp_path / "outbox" / em.LEDGER_NAME).values()) == {stores.SENT}
    replay.close()


def test_smtp_marks_each_email_sending_before_and_sent_after_its_delivery(smtp_server, tmp_path):
    port = smtp_server.server_address[1]
    m = Mailer(tmp_path, mail.Smtp(em.EmailSettings(group_id="email", smtp_host="127.0.0.1", smtp_port=port)))
    seen = []
    deliver = m.store.transport.deliver
    m.store.transport.deliver = lambda msg, ride_id: (seen.append(m.ledger.status(ride_id)), deliver(msg, ride_id))[1]
    rides = [ride(uuid4()) for _ in range(3)]
    m.applier.apply([record_of(r, offset=i) for i, r in enumerate(rides)])  # not saved yet: already 'sent'
    assert seen == [stores.SENDING] * 3
    assert stores.read_ledger(tmp_path / em.LEDGER_NAME) == {str(r.ride_id): stores.SENT for r in rides}
    m.close()


def test_a_batch_stops_between_records_when_asked(mailer):
    records = [record_of(ride(uuid4()), offset=i) for i in range(5)]
    mailer.stops = iter([False, False, True])
    assert mailer.applier.apply(records) == (2, [])
    assert mailer.tally["emailed"] == 2


# ------------------------------------------------------------------------------------------ retrying


def test_delivery_is_retried_with_backoff_then_succeeds():
    calls, sleeps = [], []

    def flaky(message, ride_id):
        calls.append(ride_id)
        if len(calls) < 3:
            raise smtplib.SMTPServerDisconnected("gone")
        return "smtp://x"

    result = mail.deliver_with_retries(flaky, em.render(ride()), RIDE_ID, lambda s: sleeps.append(s) or False)
    assert result == "smtp://x"
    assert sleeps == [1.0, 2.0]


def test_delivery_that_keeps_failing_stops_the_script_with_one_line():
    def down(message, ride_id):
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(cli.Fatal) as e:
        mail.deliver_with_retries(down, em.render(ride()), RIDE_ID, no_sleep, attempts=3)
    assert "\n" not in str(e.value)
    assert "after 3 attempts" in str(e.value) and "without committing" in str(e.value)


def test_a_stop_request_while_waiting_to_retry_ends_the_batch():
    def down(message, ride_id):
        raise OSError("unreachable")

    with pytest.raises(Stopped):
        mail.deliver_with_retries(down, em.render(ride()), RIDE_ID, lambda s: True)


def test_a_temporary_recipient_refusal_is_retried_not_dead_lettered():
    calls = []

    def greylisted(message, ride_id):
        calls.append(1)
        if len(calls) == 1:
            raise smtplib.SMTPRecipientsRefused({"ada@example.com": (450, b"try later")})
        return "smtp://x"

    assert mail.deliver_with_retries(greylisted, em.render(ride()), RIDE_ID, no_sleep) == "smtp://x"


# -------------------------------------------------------------------------------------- SMTP delivery


class _SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough of an SMTP server for smtplib: EHLO (offering AUTH, never STARTTLS), AUTH, MAIL, RCPT,
    DATA, RSET, QUIT. It records what a real server would see, and refuses what server.refuse_data says."""

    def handle(self):
        self.wfile.write(b"220 test ESMTP\r\n")
        rcpts: list[str] = []
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.wfile.write(b"250-test\r\n250 AUTH PLAIN LOGIN\r\n")
            elif verb == b"AUTH":
                self.server.logins.append(line)  # the credentials, as they crossed the wire
                self.wfile.write(b"235 2.7.0 authenticated\r\n")
            elif verb in (b"MAIL", b"RSET"):
                rcpts = []
                self.wfile.write(b"250 ok\r\n")
            elif verb == b"RCPT":
                rcpts.append(line.decode().partition(":")[2].strip().strip("<>"))
                self.wfile.write(b"250 ok\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go on\r\n")
                data = []
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data.append(chunk)
                message = b"".join(data)
                refusal = self.server.refuse_data(message)
                if refusal:
                    self.wfile.write(refusal + b"\r\n")
                else:
                    self.server.received.append(message)
                    self.server.envelopes.append(rcpts)
                    self.wfile.write(b"250 queued\r\n")
                rcpts = []
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@contextlib.contextmanager
def fake_smtp_server(refuse_data=lambda message: None):
    """A local SMTP server on a free port. What it accepted: .received (bytes per email) and .envelopes
    (the RCPT addresses of each); .logins (AUTH lines). refuse_data(message bytes) -> a reply line such
    as b"554 5.7.1 refused" refuses that message at the end of DATA (None accepts it)."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpHandler)
    server.daemon_threads = True
    server.received, server.envelopes, server.logins = [], [], []
    server.refuse_data = refuse_data
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def smtp_server():
    with fake_smtp_server() as server:
        yield server


def test_smtp_delivery_sends_the_rendered_email(smtp_server):
    port = smtp_server.server_address[1]
    s = em.EmailSettings(group_id="email", smtp_host="127.0.0.1", smtp_port=port)
    smtp = mail.Smtp(s)
    try:
        assert smtp.deliver(em.render(ride()), RIDE_ID) == f"smtp://127.0.0.1:{port}"
        smtp.deliver(em.render(ride(uuid4())), RIDE_ID)  # over the same connection
    finally:
        smtp.close()
    assert len(smtp_server.received) == 2
    parsed = message_from_bytes(smtp_server.received[0], policy=email.policy.default)
    assert parsed["Message-ID"] == f"<ride-{RIDE_ID}@rides.example>"
    assert parsed["To"] == "ada@example.com"


# ------------------------------------------------------------------------------------------- settings


def test_smtp_settings_come_from_the_standard_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("SMTP_HOST", "mail.example.com")
    monkeypatch.setenv("SMTP_PORT", "465")
    monkeypatch.setenv("SMTP_USER", "bot")
    monkeypatch.setenv("SMTP_PASSWORD", "s3cret")
    monkeypatch.setenv("SMTP_FROM", "Rides <noreply@example.com>")
    s = em.EmailSettings(group_id="email")
    assert (s.smtp_host, s.smtp_port, s.smtp_user) == ("mail.example.com", 465, "bot")
    assert s.smtp_password.get_secret_value() == "s3cret" and "s3cret" not in repr(s)
    assert s.smtp_from == "Rides <noreply@example.com>"


def test_flags_beat_the_variables_and_the_ledger_defaults_into_the_outbox(monkeypatch, tmp_path):
    monkeypatch.setenv("SMTP_HOST", "mail.example.com")
    s = cli.load(em.EmailSettings, [])
    assert s.smtp_host == "mail.example.com"
    s = em.EmailSettings(group_id="email", smtp_host="other.example.com", outbox=tmp_path / "o")
    assert s.smtp_host == "other.example.com"
    assert s.ledger_path == tmp_path / "o" / em.LEDGER_NAME


def test_without_smtp_settings_there_is_no_smtp_host(monkeypatch):
    monkeypatch.delenv("SMTP_HOST", raising=False)
    s = em.EmailSettings(group_id="email")
    assert s.smtp_host is None and s.outbox == Path("outbox")


def test_a_sender_that_is_not_an_address_is_refused():
    with pytest.raises(ValueError):
        em.EmailSettings(group_id="email", smtp_from="nobody")


# ---------------------------------------------------- one record's failure is that record's, never a stop

INJECTING = [
    "=?utf-8?q?x=0D=0ABcc=3A_evil=40attacker.test?=@example.com",  # decodes to a CR LF and a Bcc: header
    "=?utf-8?q?evil=40attacker.test=2C?=@example.com",              # decodes to a second recipient
    "Eve <eve@example.com>", "ada@example.com, eve@example.com",
]


def unchecked(**changes) -> schemas.RideConfirmed:
    """A ride with fields the schema would refuse: what render() gets if a looser schema ever lets one in."""
    return ride().model_copy(update=changes)


@pytest.mark.parametrize("address", INJECTING)
def test_render_refuses_anything_but_exactly_one_recipient_equal_to_the_customer_email(address):
    # As Mailer.handle calls it: whatever render() raises becomes this record's one-line reason.
    with pytest.raises(schemas.PoisonRecord) as e:
        schemas.record_step("cannot render the email", em.render, unchecked(customer_email=address))
    assert "\n" not in str(e.value) and "\r" not in str(e.value)


@pytest.mark.parametrize(("to", "read"), [
    ("=?utf-8?q?evil=40attacker.test=2C?=@example.com", ["evil@attacker.test", "<>"]),
    ("ada@example.com, eve@example.com", ["ada@example.com", "eve@example.com"]),
    ("ada@example.com", ["ada@example.com"]),
])
def test_recipients_are_read_as_a_mail_client_reads_the_written_header(to, read):
    # What render() checks against [customer_email], and what the SMTP envelope is made of.
    message = EmailMessage()
    message["To"] = to  # a string, as render() once set it
    assert mail.recipients(message) == read


def test_any_failure_to_render_dead_letters_the_ride_and_the_next_one_is_emailed(mailer, monkeypatch, tmp_path):
    real_render, bad = em.render, uuid4()

    def render(r, sender=em.DEFAULT_FROM):
        if r.ride_id == bad:
            raise KeyError("something no one foresaw")
        return real_render(r, sender)

    monkeypatch.setattr(em, "render", render)
    mailer.handle(record_of(ride(bad), offset=0))
    mailer.handle(record_of(ride(), offset=1))
    assert [p.name for p in emails_in(tmp_path / "outbox")] == [f"{RIDE_ID}.eml"]
    assert mailer.tally["dead_lettered"] == 1 and mailer.tally["emailed"] == 1
    assert "KeyError" in dict(mailer.producer.sent[0][3])[REASON].decode()
    assert mailer.ledger.status(bad) is None


def test_content_refused_for_good_at_data_is_dead_lettered_and_forgotten_by_the_ledger(mailer):
    def refuse(message, ride_id):
        raise smtplib.SMTPDataError(554, b"5.7.1 message content refused")

    mailer.transport.deliver = refuse
    mailer.handle(record_of(ride()))
    assert mailer.tally["dead_lettered"] == 1 and mailer.tally["emailed"] == 0
    reason = dict(mailer.producer.sent[0][3])[REASON].decode()
    assert "554" in reason and "refused" in reason
    assert mailer.ledger.status(RIDE_ID) is None


def test_a_temporary_refusal_at_data_is_retried_not_dead_lettered():
    calls = []

    def busy(message, ride_id):
        calls.append(1)
        if len(calls) == 1:
            raise smtplib.SMTPDataError(451, b"4.3.0 try again later")
        return "smtp://x"

    assert mail.deliver_with_retries(busy, em.render(ride()), RIDE_ID, no_sleep) == "smtp://x"


def test_the_smtp_envelope_and_the_to_header_name_exactly_the_customer(smtp_server):
    smtp = mail.Smtp(em.EmailSettings(group_id="email", smtp_host="127.0.0.1", smtp_port=smtp_server.server_address[1]))
    try:
        smtp.deliver(em.render(ride(customer_email="x=y?z@example.com")), RIDE_ID)
    finally:
        smtp.close()
    assert smtp_server.envelopes == [["x=y?z@example.com"]]
    parsed = message_from_bytes(smtp_server.received[0], policy=email.policy.default)
    assert [a.addr_spec for a in parsed["To"].addresses] == ["x=y?z@example.com"]


# ----------------------------------------------------------------------- SMTP credentials only over TLS


def smtp_with_login(server, **extra):
    return mail.Smtp(em.EmailSettings(group_id="email", smtp_host="127.0.0.1", smtp_port=server.server_address[1],
                                    smtp_user="bot", smtp_password="s3cret", **extra))


def test_no_password_is_sent_to_a_server_without_starttls(smtp_server):
    smtp = smtp_with_login(smtp_server)
    with pytest.raises(cli.Fatal) as e:
        smtp.open()
    smtp.close()
    assert "\n" not in str(e.value)
    assert "STARTTLS" in str(e.value) and "--smtp-allow-plain-login" in str(e.value)
    assert "s3cret" not in str(e.value)
    assert smtp_server.logins == []  # the password never crossed the wire


def test_a_plain_login_happens_only_when_explicitly_allowed(smtp_server, monkeypatch):
    monkeypatch.setenv("SMTP_ALLOW_PLAIN_LOGIN", "1")
    smtp = smtp_with_login(smtp_server)
    try:
        smtp.open()
        smtp.deliver(em.render(ride()), RIDE_ID)
    finally:
        smtp.close()
    assert len(smtp_server.logins) == 1 and len(smtp_server.received) == 1


def test_without_credentials_a_server_without_tls_is_fine(smtp_server):
    smtp = mail.Smtp(em.EmailSettings(group_id="email", smtp_host="127.0.0.1", smtp_port=smtp_server.server_address[1]))
    try:
        smtp.open()
        smtp.deliver(em.render(ride()), RIDE_ID)
    finally:
        smtp.close()
    assert smtp_server.logins == [] and len(smtp_server.received) == 1


def test_the_plain_login_flag_is_off_unless_given():
    assert em.EmailSettings(group_id="email").smtp_allow_plain_login is False
    s = cli.load(em.EmailSettings, [])
    assert s.smtp_allow_plain_login is False


# ------------------------------------------------------------------------------------- greet by name


def test_the_rider_is_greeted_by_name_in_the_body_only():
    message = em.render(ride(customer_name="Ada Garcia"))
    assert message.get_content().startswith("Hello Ada Garcia,\n")
    assert all("Ada" not in str(value) for value in message.values())


def test_without_a_name_the_greeting_is_neutral_not_an_identifier():
    body = em.render(ride(customer_name=None)).get_content()
    assert body.startswith("Hello,\n") and "cust-0042" not in body


def test_a_name_in_any_script_renders_and_parses_back():
    message = message_from_bytes(bytes(em.render(ride(customer_name="Zoë 山田 Ñúñez"))), policy=email.policy.default)
    assert message.get_content().startswith("Hello Zoë 山田 Ñúñez,\n")


# ---------------------------------------------------------------------- the ledger belongs to one group


def test_a_ledger_refuses_a_second_group_in_one_line(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    stores.Ledger(path, "email").close()
    with pytest.raises(cli.Fatal) as e:
        stores.Ledger(path, "email-2")
    assert "\n" not in str(e.value)
    assert "belongs to group 'email'" in str(e.value) and "--ledger" in str(e.value)


def test_instances_of_one_group_share_a_ledger(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    first, second = stores.Ledger(path, "email"), stores.Ledger(path, "email")
    first.sent(RIDE_ID, "<m>")
    assert second.status(RIDE_ID) == stores.SENT  # what lets a scaled-out group skip a rebalanced ride
    first.close()
    second.close()
