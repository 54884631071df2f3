"""email.py's promise for any ride the schema accepts, checked on arbitrary ones (hypothesis): it is decoded,
rendered and delivered, to the outbox and over SMTP, without an exception and to exactly one recipient, the
ride's customer_email (in the To header as a mail client parses it, and in the SMTP envelope). Whatever
the schema refuses is set aside, never delivered."""

import email.policy
import json
from email import message_from_bytes
from pathlib import Path
from uuid import uuid4

import pytest
from hypothesis import given, settings

from common import mail, schemas
from tests.unit.strategies import encoded_word_emails, ride_confirmations
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
