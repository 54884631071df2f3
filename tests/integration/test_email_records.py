"""email.py against the real broker: a record that cannot be emailed is set aside with its reason, and
email.py goes on. The records are produced raw onto ride_confirmed (they bypass transaction.py, as any
producer of that topic could); email.py sends over SMTP to a local fake server."""

import json
from collections import Counter
from email import message_from_bytes, policy

import pytest

from common.dead_letters import GROUP, REASON, SOURCE_TOPIC
from tests.integration.pipeline import header, parse_summary, produce_raw, read_until, wait_until
from tests.integration.test_consumers import Run, as_records, confirmed_rides
from tests.unit.test_email import fake_smtp_server

HOSTILE_EMAILS = [
    "=?utf-8?q?x=0D=0ABcc=3A_evil=40attacker.test?=@example.com",  # once stopped email.py at every restart
    "=?utf-8?q?evil=40attacker.test=2C?=@example.com",              # once emailed a second, injected recipient
]


@pytest.fixture
def run(kafka_bootstrap, tmp_path) -> Run:
    return Run(kafka_bootstrap, tmp_path)


def with_email(ride, address: str) -> tuple[bytes, bytes]:
    value = json.loads(ride.model_dump_json())
    value["customer_email"] = address
    return str(ride.ride_id).encode(), json.dumps(value).encode()


def test_hostile_addresses_and_refused_content_are_set_aside_and_every_other_ride_is_emailed_once(run):
    rides = confirmed_rides(40, seed=11)
    hostile = [with_email(rides[5], HOSTILE_EMAILS[0]), with_email(rides[15], HOSTILE_EMAILS[1])]
    refused = rides[25]  # the mail server answers 554 to its DATA: content refused for good
    others = [r for i, r in enumerate(rides) if i not in (5, 15, 25)]
    records = as_records(rides[:5]) + [hostile[0]] + as_records(rides[6:15]) + [hostile[1]] + as_records(rides[16:])

    def refuse(message: bytes) -> bytes | None:
        return b"554 5.7.1 message content refused" if str(refused.ride_id).encode() in message else None

    with fake_smtp_server(refuse_data=refuse) as smtp_server:
        produce_raw(run.bootstrap, run.source, records)
        smtp = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_server.server_address[1])}
        with run.email(env=smtp) as email:
            dead = read_until(run.bootstrap, run.dlq, lambda rs: len(rs) >= 3, quiet=1)
            run.wait_emailed(len(others))
            assert email.running  # no record stopped it
            email.stop()

    sent = [message_from_bytes(m, policy=policy.default) for m in smtp_server.received]
    assert Counter(m["X-Ride-ID"] for m in sent) == Counter(str(r.ride_id) for r in others)  # each once
    by_id = {str(r.ride_id): r.customer_email for r in others}
    for message, envelope in zip(sent, smtp_server.envelopes, strict=True):
        assert envelope == [by_id[message["X-Ride-ID"]]]
        assert [a.addr_spec for a in message["To"].addresses] == envelope
    assert not any("attacker" in rcpt for envelope in smtp_server.envelopes for rcpt in envelope)

    assert sorted(d.key for d in dead) == sorted([hostile[0][0], hostile[1][0], str(refused.ride_id).encode()])
    reasons = {d.key: header(d, REASON) for d in dead}
    assert all(header(d, GROUP) == run.prefix + "email" and header(d, SOURCE_TOPIC) == run.source for d in dead)
    assert "customer_email" in reasons[hostile[0][0]] and "customer_email" in reasons[hostile[1][0]]
    assert "554" in reasons[str(refused.ride_id).encode()]
    assert str(refused.ride_id) not in run.ledger_rows()  # forgotten: a replay from the DLQ emails it
    assert parse_summary(email.log()) == {"emailed": len(others), "resent": 0, "duplicates_skipped": 0,
                                          "dead_lettered": 3}
    assert "Traceback" not in email.log()


def test_a_replay_of_the_refused_ride_from_the_dead_letter_topic_emails_it(run):
    ride = confirmed_rides(1, seed=12)[0]
    refusing = [True]

    def refuse(message: bytes) -> bytes | None:
        return b"554 5.7.1 message content refused" if refusing[0] else None

    with fake_smtp_server(refuse_data=refuse) as smtp_server:
        smtp = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_server.server_address[1])}
        run.produce([ride])
        with run.email(env=smtp) as email:
            dead = read_until(run.bootstrap, run.dlq, lambda rs: len(rs) >= 1, quiet=0.5)
            refusing[0] = False  # the cause is fixed; the letter goes back to its source topic
            produce_raw(run.bootstrap, run.source, [(dead[0].key, dead[0].value)])
            wait_until(lambda: len(smtp_server.received) == 1, 60, "the replayed ride emailed")
            email.stop()
    assert parse_summary(email.log())["emailed"] == 1
