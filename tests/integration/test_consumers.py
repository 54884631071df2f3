"""email.py and analysis.py as real subprocesses against the real broker.

Each test has its own topics (--topic-prefix) and groups, and produces confirmed rides straight into its
ride_confirmed. What the scripts did is read from what they leave behind: the .eml files in the outbox and
the ledger (email.py), the state file (analysis.py), the dead-letter topic, and their summary lines.
"""

import random
import signal
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email import message_from_bytes, policy
from pathlib import Path
from uuid import UUID

import pytest
from kafka import KafkaConsumer
from kafka.structs import OffsetAndMetadata, TopicPartition

import analysis
from common import clients, schemas, stores, topics
from common.dead_letters import GROUP, REASON, SOURCE_TOPIC
from common.settings import Settings
from common.stats import Stats, load_state
from tests.integration.pipeline import (
    Script,
    header,
    metrics_url,
    parse_summary,
    produce_raw,
    read_until,
    sample,
    scrape,
    unique_prefix,
    wait_until,
)
from tests.unit.test_email import fake_smtp_server, load_email_script
from tools.broker import free_port

em = load_email_script()

ZONES = ["Mitte", "Kreuzberg", "Neukölln", "Prenzlauer Berg", "Charlottenburg", "Friedrichshain"]
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


def confirmed_rides(n: int, seed: int = 1) -> list[schemas.RideConfirmed]:
    rnd = random.Random(seed)
    rides = []
    for i in range(n):
        at = T0 + timedelta(seconds=i)
        rides.append(schemas.RideConfirmed(
            ride_id=UUID(int=rnd.getrandbits(128), version=4), customer_id=f"cust-{i % 50}",
            customer_email=f"rider{i % 50}@example.com",
            pickup=schemas.Place(lat=52.5 + rnd.random() / 10, lon=13.3 + rnd.random() / 10, zone=rnd.choice(ZONES)),
            dropoff=schemas.Place(lat=52.5 + rnd.random() / 10, lon=13.3 + rnd.random() / 10, zone=rnd.choice(ZONES)),
            requested_at=at - timedelta(seconds=1), driver_id=f"drv-{rnd.randrange(20):03d}",
            distance_km=round(rnd.uniform(0.5, 15), 2), pickup_eta_minutes=round(rnd.uniform(1, 15), 1),
            fare=Decimal(rnd.randrange(500, 5000)) / 100, currency="EUR", confirmed_at=at,
        ))
    return rides


def as_records(rides) -> list[tuple[bytes, bytes]]:
    return [(schemas.ride_key(r.ride_id), schemas.encode(r)) for r in rides]


class Run:
    """One test's topics, groups, outbox, ledger and state file."""

    def __init__(self, bootstrap: str, tmp_path: Path) -> None:
        self.bootstrap = bootstrap
        self.prefix = unique_prefix("consumers")
        self.source = self.prefix + topics.RIDE_CONFIRMED
        self.dlq = topics.dead_letter_topic(self.source)
        self.outbox = tmp_path / "outbox"
        self.ledger = self.outbox / em.LEDGER_NAME
        self.state = tmp_path / "analysis.db"
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        admin = clients.admin(Settings(bootstrap_servers=bootstrap))
        try:  # the pipeline's own partition counts, as the scripts would create them
            clients.create_topics(admin, Settings(bootstrap_servers=bootstrap, topic_prefix=self.prefix),
                                 [topics.RIDE_CONFIRMED, topics.dead_letter_topic(topics.RIDE_CONFIRMED)])
        finally:
            admin.close()

    def email(self, *args: str, env: dict[str, str] | None = None) -> Script:
        return Script("email.py", "--outbox", str(self.outbox), *args, bootstrap=self.bootstrap,
                      prefix=self.prefix, group_id=self.prefix + "email", log_dir=self.logs, env=env)

    def analysis(self, *args: str) -> Script:
        return Script("analysis.py", "--state", str(self.state), "--every", "1", *args, bootstrap=self.bootstrap,
                      prefix=self.prefix, group_id=self.prefix + "analysis", log_dir=self.logs)

    def produce(self, rides) -> None:
        produce_raw(self.bootstrap, self.source, as_records(rides))

    # What the scripts left behind.
    def emails(self) -> dict[str, bytes]:
        return {p.stem: p.read_bytes() for p in self.outbox.glob("*.eml")}

    def ledger_rows(self) -> dict[str, str]:
        try:
            return stores.read_ledger(self.ledger)
        except sqlite3.Error:  # not created yet, or created a moment ago and its table not yet
            return {}

    def analysed(self) -> int:
        try:
            return load_state(self.state)[0].all.rides
        except sqlite3.Error:
            return 0

    def wait_emailed(self, n: int, timeout: float = 90) -> None:
        wait_until(lambda: sum(s == stores.SENT for s in self.ledger_rows().values()) >= n, timeout,
                   f"{n} rides emailed (ledger: {len(self.ledger_rows())} rows)")

    def wait_analysed(self, n: int, timeout: float = 90) -> None:
        wait_until(lambda: self.analysed() >= n, timeout, f"{n} rides analysed (state: {self.analysed()})")


@pytest.fixture
def run(kafka_bootstrap, tmp_path) -> Run:
    return Run(kafka_bootstrap, tmp_path)


def assert_one_email_per_ride(run: Run, rides) -> None:
    emails = run.emails()
    assert sorted(emails) == sorted(str(r.ride_id) for r in rides)
    assert run.ledger_rows() == {str(r.ride_id): stores.SENT for r in rides}
    for r in rides[:: max(1, len(rides) // 20)]:  # a sample: the right email in the right file
        parsed = message_from_bytes(emails[str(r.ride_id)], policy=policy.default)
        assert parsed["To"] == r.customer_email
        assert parsed["Message-ID"] == em.message_id(r.ride_id, em.DEFAULT_FROM)
        assert r.driver_id in parsed.get_content()


def reset_group_to_beginning(bootstrap: str, group_id: str, topic: str) -> None:
    """What `kafka-consumer-groups --reset-offsets --to-earliest` does, for a group with no members."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in tps})
    finally:
        consumer.close()


# -------------------------------------------------------------------------------------------- tests


def test_fan_out_both_groups_get_every_confirmed_ride(run):
    rides = confirmed_rides(300)
    run.produce(rides)
    with run.email() as email, run.analysis() as analyser:
        run.wait_emailed(300)
        run.wait_analysed(300)
        email.stop()
        analyser.stop()
    assert_one_email_per_ride(run, rides)
    assert parse_summary(email.log()) == {"emailed": 300, "resent": 0, "duplicates_skipped": 0, "dead_lettered": 0}
    expected = Stats()
    for r in rides:
        analysis.fold(expected, r)
    # Rides per minute follow the wall clock: these rides of T0 are older than the day analysis.py keeps.
    assert load_state(run.state)[0] == analysis.prune(expected, now=datetime.now(timezone.utc))
    summary = parse_summary(analyser.log())
    assert summary["total"] == 300 and summary["zones"] == len({r.pickup.zone for r in rides})
    assert "confirmed rides: 300" in analyser.stdout()


def test_email_is_idempotent_across_a_replay_and_the_crash_window(run):
    rides = confirmed_rides(200, seed=2)
    run.produce(rides)
    with run.email() as email:
        run.wait_emailed(200)
        email.stop()
    first_emails = run.emails()

    # Make the ledger look like two crashes between delivery and the ledger's 'sent': one before the file
    # was written (no file), one after (file there). Then replay the whole topic from the beginning.
    lost, written = str(rides[10].ride_id), str(rides[20].ride_id)
    (run.outbox / f"{lost}.eml").unlink()
    db = sqlite3.connect(run.ledger)
    with db:
        db.execute("UPDATE emails SET status = 'sending' WHERE ride_id IN (?, ?)", (lost, written))
    db.close()
    reset_group_to_beginning(run.bootstrap, run.prefix + "email", run.source)

    with run.email() as again:
        run.wait_emailed(200)  # the two 'sending' ones are 'sent' again
        wait_until(lambda: again.log().count("was already emailed: skipped") >= 198, 90, "198 replays skipped")
        again.stop()
    assert parse_summary(again.log()) == {"emailed": 2, "resent": 2, "duplicates_skipped": 198, "dead_lettered": 0}
    assert_one_email_per_ride(run, rides)
    assert run.emails() == first_emails  # the resends are the very same emails, in the very same files
    assert again.log().count("may have been emailed just before a crash") == 2


@pytest.mark.chaos  # `make chaos`, with the other crash and outage runs
def test_kill_9_mid_stream_analysis_stays_exact_and_email_sends_each_ride_once(run):
    rides = confirmed_rides(600, seed=3)
    done = threading.Event()

    def produce_slowly():  # the stream is still flowing when the scripts are killed
        try:
            for i in range(0, len(rides), 20):
                run.produce(rides[i:i + 20])
                time.sleep(0.3)
        finally:
            done.set()

    producer = threading.Thread(target=produce_slowly, daemon=True)
    producer.start()
    try:
        for round_ in range(2):
            with run.email() as email, run.analysis() as analyser:
                run.wait_analysed(100 * (round_ + 1))
                run.wait_emailed(100 * (round_ + 1))
                analyser.stop(sig=signal.SIGKILL, expect=-signal.SIGKILL)
                email.stop(sig=signal.SIGKILL, expect=-signal.SIGKILL)
        producer.join(timeout=120)
        assert done.is_set()
        with run.email() as email, run.analysis() as analyser:
            run.wait_analysed(len(rides))
            run.wait_emailed(len(rides))
            time.sleep(2)  # anything extra (a ride counted twice) would show up now
            email.stop()
            analyser.stop()
    finally:
        producer.join(timeout=120)
    stats, offsets = load_state(run.state)
    assert stats.all.rides == len(rides)
    assert sum(t.rides for t in stats.zones.values()) == len(rides)
    assert sum(offsets.values()) == len(rides)  # every offset of every partition, each counted once
    assert parse_summary(analyser.log())["total"] == len(rides)
    assert_one_email_per_ride(run, rides)


def test_sigterm_stops_both_cleanly_within_10_seconds(run):
    with run.email() as email, run.analysis() as analyser:
        email.wait_for_log(r"emailing confirmed rides from")
        analyser.wait_for_log(r"analysing confirmed rides from")
        run.produce(confirmed_rides(20, seed=4))
        run.wait_emailed(20)
        run.wait_analysed(20)
        email.stop()      # exit 0 within 10 s, or the test fails
        analyser.stop()
    assert parse_summary(email.log())["emailed"] == 20
    assert parse_summary(analyser.log())["total"] == 20
    assert "Traceback" not in email.log() + analyser.log()


def test_poison_goes_to_the_dead_letter_topic_and_later_rides_still_count(run):
    before, after = confirmed_rides(30, seed=5), confirmed_rides(30, seed=6)
    valid = schemas.encode(before[0])
    poison = [
        (b"not-json", b"{this is not json"),
        (b"wrong-key", valid),                                      # key is not the ride_id
        (schemas.ride_key(before[0].ride_id), b'{"ride_id": "x"}'),  # missing fields
        (b"tombstone", None),
    ]
    produce_raw(run.bootstrap, run.source, as_records(before) + poison + as_records(after))
    with run.email() as email, run.analysis() as analyser:
        run.wait_emailed(60)
        run.wait_analysed(60)
        dead = read_until(run.bootstrap, run.dlq, lambda rs: len(rs) >= 2 * len(poison), quiet=1)
        email.stop()
        analyser.stop()
    assert_one_email_per_ride(run, before + after)
    assert load_state(run.state)[0].dead_lettered == len(poison)
    assert parse_summary(email.log())["dead_lettered"] == len(poison)
    assert parse_summary(analyser.log())["dead_lettered"] == len(poison)
    by_group: dict[str, list] = {}
    for d in dead:
        by_group.setdefault(header(d, GROUP), []).append(d)
        assert header(d, SOURCE_TOPIC) == run.source and header(d, REASON)
    assert sorted(by_group) == sorted([run.prefix + "email", run.prefix + "analysis"])
    for group in by_group.values():
        assert sorted(d.key for d in group) == sorted(k for k, _ in poison)
    reasons = {d.key: header(d, REASON) for d in by_group[run.prefix + "email"]}
    assert "invalid" in reasons[b"not-json"] and "is not the ride_id" in reasons[b"wrong-key"]
    assert "tombstone" in reasons[b"tombstone"]


@pytest.mark.parametrize("script", ["email.py", "analysis.py"])
def test_no_broker_one_line_error_and_a_non_zero_exit(script, tmp_path):
    nowhere = f"127.0.0.1:{free_port()}"
    with Script(script, "--wait", "2", "--outbox" if script == "email.py" else "--state",
                str(tmp_path / ("outbox" if script == "email.py" else "a.db")), bootstrap=nowhere,
                log_dir=tmp_path) as s:
        code = s.wait(timeout=60, expect=None)
        log = s.log()
    assert code != 0
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "unreachable" in errors[0] and nowhere in errors[0], log
    assert "Traceback" not in log


def test_smtp_down_stops_without_committing_then_every_ride_is_sent_once_it_is_back(run):
    rides = confirmed_rides(20, seed=7)
    run.produce(rides)
    down = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(free_port())}
    with run.email(env=down) as email:
        code = email.wait(timeout=90, expect=None)  # three retries (1 + 2 + 4 s), then a one-line error
    errors = [line for line in email.log().splitlines() if " ERROR " in line]
    assert code == 1 and len(errors) == 1 and "without committing" in errors[0], email.log()
    assert "Traceback" not in email.log()
    assert list(run.ledger_rows().values()) == [stores.SENDING]  # the ride it was trying: 'maybe sent'

    with fake_smtp_server() as smtp_server:
        up = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_server.server_address[1])}
        with run.email("--metrics-port", "0", env=up) as email:
            run.wait_emailed(len(rides))
            url = metrics_url(email)
            observed = ("rides_end_to_end_seconds_count", (("script", "email.py"), ("stage", "emailed")))
            # The ledger says 'sent' per email; the histogram is observed once the batch is committed, after it.
            wait_until(lambda: scrape(url).get(observed) == len(rides), timeout=30, what="every email observed")
            scraped = scrape(url)
            email.stop()
    # Its metrics say the same: 20 deliveries, none retried (and each ride's latency observed once, above).
    assert sample(scraped, "rides_smtp_deliveries_total", result="delivered") == len(rides)
    assert not [v for (n, ls), v in scraped.items()
                if n == "rides_smtp_deliveries_total" and dict(ls)["result"] != "delivered"]
    received = [message_from_bytes(m, policy=policy.default) for m in smtp_server.received]
    assert sorted(m["X-Ride-ID"] for m in received) == sorted(str(r.ride_id) for r in rides)
    assert run.emails() == {}  # with SMTP settings, nothing goes to the outbox
    assert parse_summary(email.log()) == {"emailed": 20, "resent": 1, "duplicates_skipped": 0, "dead_lettered": 0}


def test_a_second_group_on_the_same_ledger_is_refused_and_nothing_is_emailed_twice(run):
    rides = confirmed_rides(30, seed=8)
    run.produce(rides)
    with run.email() as first:
        run.wait_emailed(len(rides))
        # Another group gets every ride again; on this ledger it would skip or repeat the first one's work.
        with Script("email.py", "--outbox", str(run.outbox), "--ledger", str(run.ledger), bootstrap=run.bootstrap,
                    prefix=run.prefix, group_id=run.prefix + "email-other", log_dir=run.logs) as other:
            code = other.wait(timeout=60, expect=None)
        assert first.running
        first.stop()
    errors = [line for line in other.log().splitlines() if " ERROR " in line]
    assert code == 1 and len(errors) == 1, other.log()
    assert f"belongs to group '{run.prefix}email'" in errors[0] and "--ledger" in errors[0]
    assert "Traceback" not in other.log()
    assert parse_summary(first.log())["emailed"] == len(rides)
    assert_one_email_per_ride(run, rides)


def test_two_instances_of_one_group_share_the_ledger_and_email_each_ride_once(run):
    rides = confirmed_rides(120, seed=9)
    with run.email() as a, run.email() as b:
        a.wait_for_log(r"partitions assigned")
        b.wait_for_log(r"partitions assigned")
        run.produce(rides)
        run.wait_emailed(len(rides))
        a.stop()
        b.stop()
    emailed = parse_summary(a.log())["emailed"] + parse_summary(b.log())["emailed"]
    assert emailed == len(rides)
    assert_one_email_per_ride(run, rides)


def test_no_password_goes_to_an_smtp_server_without_tls_and_nothing_is_committed(run):
    rides = confirmed_rides(10, seed=10)
    run.produce(rides)
    with fake_smtp_server() as smtp_server:
        smtp = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_server.server_address[1]),
                "SMTP_USER": "bot", "SMTP_PASSWORD": "s3cret"}
        with run.email(env=smtp) as refused:
            code = refused.wait(timeout=60, expect=None)
        errors = [line for line in refused.log().splitlines() if " ERROR " in line]
        assert code == 1 and len(errors) == 1 and "STARTTLS" in errors[0], refused.log()
        assert "s3cret" not in refused.log() and "Traceback" not in refused.log()
        assert smtp_server.logins == [] and smtp_server.received == []

        # Explicitly allowed (a local test server): every ride goes out, so none was committed before.
        with run.email(env=smtp | {"SMTP_ALLOW_PLAIN_LOGIN": "1"}) as allowed:
            run.wait_emailed(len(rides))
            allowed.stop()
    assert len(smtp_server.logins) == 1
    assert sorted(message_from_bytes(m, policy=policy.default)["X-Ride-ID"] for m in smtp_server.received) == \
        sorted(str(r.ride_id) for r in rides)
