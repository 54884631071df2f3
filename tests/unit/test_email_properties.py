"""email.py's promise for any ride the schema accepts, checked on arbitrary ones (hypothesis): it is decoded,
rendered and delivered, to the outbox and over SMTP, without an exception and to exactly one recipient, the
ride's customer_email (in the To header as a mail client parses it, and in the SMTP envelope). Whatever
the schema refuses is set aside, never delivered."""

import email.policy
import json
from email import message_from_bytes
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import mail, schemas
from common.schemas import EMAIL_PATTERN
from tests.unit.strategies import emails, encoded_word_emails, ride_confirmations
from tests.unit.test_email import Mailer, em, fake_smtp_server, record

EXAMPLES = 150


def addresses(raw: bytes, header: str) -> list[str]:
    value = message_from_bytes(raw, policy=email.policy.default)[header]
    return [a.addr_spec for a in value.addresses] if value is not None else []


def mailer_for(transport, directory: Path) -> Mailer:
    return Mailer(directory, transport)


@pytest.fixture(scope="module")
def smtp_server():
    with fake_smtp_server() as server:
        yield server


@pytest.fixture(scope="module")
def mailers(smtp_server, tmp_path_factory):
    """One mailer writing to an outbox, one sending to the fake SMTP server; both as email.py builds them."""
    port = smtp_server.server_address[1]
    smtp = mail.Smtp(em.EmailSettings(group_id="email", smtp_host="127.0.0.1", smtp_port=port))
    outbox_dir, smtp_dir = tmp_path_factory.mktemp("outbox"), tmp_path_factory.mktemp("smtp")
    both = mailer_for(mail.Outbox(outbox_dir), outbox_dir), mailer_for(smtp, smtp_dir)
    yield both
    for m in both:
        m.close()


def record_of(ride: schemas.RideConfirmed):
    return record(schemas.encode(ride), schemas.ride_key(ride.ride_id))


@settings(max_examples=EXAMPLES, deadline=None)
@given(ride_confirmations())
def test_every_valid_confirmation_is_emailed_to_its_customer_alone(mailers, smtp_server, ride):
    ride = ride.model_copy(update={"ride_id": uuid4()})  # hypothesis repeats ids: the ledger would skip them
    outbox, smtp = mailers
    for mailer in mailers:
        before = mailer.tally["emailed"]
        mailer.handle(record_of(ride))  # decode, render, deliver: any exception fails the test
        assert (mailer.tally["emailed"] - before, mailer.tally["dead_lettered"]) == (1, 0)

    eml = (outbox.transport.directory / mail.eml_name(ride.ride_id)).read_bytes()
    assert addresses(eml, "To") == [ride.customer_email]
    sent = smtp_server.received[-1]
    assert smtp_server.envelopes[-1] == [ride.customer_email]  # RCPT TO: the only envelope recipient
    assert addresses(sent, "To") == [ride.customer_email]
    for raw in (eml, sent):
        parsed = message_from_bytes(raw, policy=email.policy.default)
        assert parsed["Cc"] is None and parsed["Bcc"] is None
        assert parsed["X-Ride-ID"] == str(ride.ride_id)


@settings(max_examples=EXAMPLES, deadline=None)
@given(ride_confirmations(), encoded_word_emails)
def test_an_encoded_word_address_is_set_aside_never_delivered(mailers, smtp_server, ride, address):
    value = json.loads(schemas.encode(ride))
    value["customer_email"] = address  # as a producer that skips the schema would write it
    received = len(smtp_server.received)
    for mailer in mailers:
        before = mailer.tally["dead_lettered"]
        mailer.handle(record(json.dumps(value).encode(), schemas.ride_key(ride.ride_id)))
        assert mailer.tally["dead_lettered"] == before + 1
    assert len(smtp_server.received) == received
    assert not (mailers[0].transport.directory / mail.eml_name(ride.ride_id)).exists()


# --------------------------------------------- the fast policy writes what email.policy.default writes

SENDERS = st.sampled_from([em.DEFAULT_FROM, "noreply@rides.berlin", "Café Zoë <cafe@rides.example>",
                           '"Rides, Inc." <rides@rides.example>', "Rides,  Inc. <rides@rides.example>",
                           "Rides of the very long and winding road, Manhattan, New York <noreply@rides.example>"])


def reference_render(ride: schemas.RideConfirmed, sender: str) -> bytes:
    """render() as it was written before mail.POLICY (issue 9): email.policy.default, headers parsed as set."""
    msg = EmailMessage()
    for name, value in em.render(ride, sender).items():  # values as render() set them, in its order
        if name.lower() not in ("content-type", "content-transfer-encoding", "mime-version"):
            msg[name] = Address(addr_spec=str(value)) if name == "To" else sender if name == "From" else str(value)
    msg.set_content(em.render(ride, sender).get_content())
    return bytes(msg)


@settings(max_examples=EXAMPLES, deadline=None)
@given(ride_confirmations(), SENDERS)
def test_render_writes_the_bytes_of_the_default_policy(ride, sender):
    assert bytes(em.render(ride, sender)) == reference_render(ride, sender)


@settings(max_examples=60, deadline=None)
@given(ride_confirmations(), SENDERS)
def test_every_header_and_the_body_parse_back_as_rendered(ride, sender):
    # Non-ASCII names and zones, long zones (lines past 78 characters), any sender: what a client reads.
    for raw in (bytes(em.render(ride, sender)), em.render(ride, sender).as_bytes(policy=email.policy.SMTP)):
        parsed = message_from_bytes(raw, policy=email.policy.default)
        assert addresses(raw, "To") == [ride.customer_email]
        assert parsed["From"] == str(email.policy.default.header_factory("From", sender))
        eta = max(1, round(ride.pickup_eta_minutes))
        # strip(): default folds a subject past 78 characters after "Subject:", and a client unfolds a space.
        subject = f"Your ride is confirmed: driver {ride.driver_id} arrives in about {eta} min"
        assert parsed["Subject"].strip() == subject
        assert parsed["Date"].datetime == ride.confirmed_at.replace(microsecond=0)
        assert parsed["Message-ID"] == em.message_id(ride.ride_id, sender)
        assert parsed["X-Ride-ID"] == str(ride.ride_id)
        body = parsed.get_content().splitlines()  # CRLF over SMTP
        assert body == em.render(ride, sender).get_content().splitlines()
        assert body[0] == (f"Hello {ride.customer_name}," if ride.customer_name else "Hello,")
        assert len(parsed.keys()) == 9  # the six above, MIME-Version, Content-Type, Content-Transfer-Encoding


def written_to(value: str) -> EmailMessage:
    msg = EmailMessage(policy=mail.POLICY)
    msg["To"] = value
    return msg


@settings(max_examples=500, deadline=None)
@given(st.one_of(emails, st.from_regex(EMAIL_PATTERN, fullmatch=True), encoded_word_emails,
                 st.text(max_size=120).filter(lambda s: len(s.splitlines()) <= 1)))
def test_recipients_reads_the_to_line_as_the_parser_does(value):
    # recipients() skips the parser for a plain addr-spec alone: it must read what the parser reads.
    def parser() -> list[str]:
        wire = bytes(written_to(value))  # the To line as written, then the blank line
        return [a.addr_spec for a in BytesHeaderParser(policy=email.policy.default).parsebytes(wire)["To"].addresses]

    assert outcome(lambda: mail.recipients(written_to(value))) == outcome(parser)


def outcome(read):
    """What read() returns, or the type of what it raises (the parser fails on some values, such as '<')."""
    try:
        return read()
    except Exception as e:  # noqa: BLE001
        return type(e)
