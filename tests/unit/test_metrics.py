"""common.metrics without a broker: the counts served equal the loop's tally, lag and its age, the end-to-end
histogram, dead-letter reason classes, what /healthz says and when, and the HTTP server itself on loopback."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from common import consume, mail, reachability, schemas
from common.errors import Fatal
from common.loop import Tally
from common.metrics import OTHER_REASON, REASON_CLASSES, STALL_AFTER, Health, Watch, reason_class
from common.transform import repeat_reason


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(watch: Watch, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric as Prometheus would read it off /metrics: labels -> value."""
    text = generate_latest(watch.registry).decode()
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def record(topic: str, partition: int, offset: int, timestamp_ms: int) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, timestamp=timestamp_ms)


@pytest.fixture
def watch() -> Watch:
    return Watch("transaction.py", "transaction", unreachable_after=60, registry=CollectorRegistry(), clock=Clock())


def test_processed_total_is_the_tally_itself_at_every_scrape(watch):
    tally = Tally(confirmed=3, rejected=1)
    watch.count(tally, {"confirmed": "confirmed", "rejected": "rejected", "duplicates": "duplicate"})
    assert samples(watch, "rides_processed_total") == {
        (("outcome", "confirmed"), ("script", "transaction.py")): 3,
        (("outcome", "rejected"), ("script", "transaction.py")): 1,
        (("outcome", "duplicate"), ("script", "transaction.py")): 0,  # shown before the first one
    }
    tally.update({"confirmed": 2, "duplicates": 5})
    assert samples(watch, "rides_processed_total")[(("outcome", "duplicate"), ("script", "transaction.py"))] == 5
    assert samples(watch, "rides_processed_total")[(("outcome", "confirmed"), ("script", "transaction.py"))] == 5


def test_transactions_committed_and_aborted_from_the_tally(watch):
    tally = Tally(batches=7, aborted=2)
    watch.transactions(lambda: tally, committed="batches", aborted="aborted")
    assert samples(watch, "rides_transactions_total") == {
        (("outcome", "committed"), ("script", "transaction.py")): 7,
        (("outcome", "aborted"), ("script", "transaction.py")): 2}


def test_lag_in_records_per_partition_and_zero_seconds_once_caught_up(watch):
    clock = watch.clock
    watch.polled([record("t", 0, 10, int((clock.now - 30) * 1000)), record("t", 1, 5, int((clock.now - 50) * 1000))])
    assert watch.lag_seconds() == 0  # nothing is known to be behind before the first batch is processed
    watch.processed({("t", 0): 0, ("t", 1): 0}, [])
    assert samples(watch, "rides_consumer_lag_records") == {
        (("group", "transaction"), ("partition", "0"), ("topic", "t")): 0,
        (("group", "transaction"), ("partition", "1"), ("topic", "t")): 0}
    assert samples(watch, "rides_consumer_lag_seconds") == {(("group", "transaction"),): 0}


def test_lag_seconds_is_the_age_of_the_oldest_ride_waiting_and_grows_while_nothing_moves(watch):
    clock = watch.clock
    batch = [record("t", 0, 10, int((clock.now - 40) * 1000)), record("t", 0, 11, int((clock.now - 20) * 1000)),
             record("t", 1, 3, int((clock.now - 30) * 1000))]
    watch.polled(batch)
    # After the batch, partition 0 is still 100 behind (its next ride is younger than its last, 20 s old);
    # partition 1 is caught up.
    watch.processed({("t", 0): 100, ("t", 1): 0}, batch)
    assert watch.lag_seconds() == pytest.approx(20, abs=0.01)
    clock.now += 15  # stuck: no batch for 15 s
    assert samples(watch, "rides_consumer_lag_seconds")[(("group", "transaction"),)] == pytest.approx(35, abs=0.01)
    watch.polled([])
    watch.processed({("t", 0): 0, ("t", 1): 0}, [])
    assert watch.lag_seconds() == 0


def test_end_to_end_observes_each_ride_from_its_requested_at(watch):
    now = datetime.fromtimestamp(watch.clock.now, timezone.utc)
    watch.done("confirmed", [now - timedelta(milliseconds=20), now - timedelta(seconds=2), now])
    hist = samples(watch, "rides_end_to_end_seconds_count")
    assert hist == {(("script", "transaction.py"), ("stage", "confirmed")): 3}
    assert samples(watch, "rides_end_to_end_seconds_sum")[(("script", "transaction.py"), ("stage", "confirmed"))] \
        == pytest.approx(2.02, abs=0.001)
    buckets = samples(watch, "rides_end_to_end_seconds_bucket")
    assert buckets[(("le", "0.025"), ("script", "transaction.py"), ("stage", "confirmed"))] == 2
    assert buckets[(("le", "2.5"), ("script", "transaction.py"), ("stage", "confirmed"))] == 3


def test_a_ride_requested_in_the_future_counts_as_zero_not_negative(watch):
    future = datetime.fromtimestamp(watch.clock.now + 60, timezone.utc)
    watch.done("emailed", [future])
    assert samples(watch, "rides_end_to_end_seconds_sum")[(("script", "transaction.py"), ("stage", "emailed"))] == 0


@pytest.mark.parametrize(("reason", "expected"), [
    (lambda: schemas_reason(b"{oops"), "invalid"),
    (lambda: schemas_reason(b'{"ride_id": 5}'), "invalid"),
    (lambda: schemas_reason(None), "tombstone"),
    (lambda: key_reason(), "key_mismatch"),
    (lambda: "in partition 2, but its key belongs in partition 4 (Kafka's default partitioner, murmur2): ...",
     "wrong_partition"),
    (lambda: repeat_reason(SimpleNamespace(ride_id="r-1"), "aaaa", "bbbb"), "conflicting_request"),
    (lambda: "the mail server refused the email to a@b.cd: 550 no such user", "refused_by_mail_server"),
    (lambda: f"kafka-python cannot read this record (CorruptRecordError: {'x'})", "unreadable"),
    (lambda: "cannot be confirmed: ZeroDivisionError: division by zero", OTHER_REASON),
])
def test_each_reason_the_pipeline_writes_falls_in_its_class(reason, expected):
    assert reason_class(reason()) == expected


def schemas_reason(value: bytes | None) -> str:
    with pytest.raises(schemas.PoisonRecord) as e:
        schemas.decode(schemas.RideRequest, b"k", value)
    return str(e.value)


def key_reason() -> str:
    good = b'{"ride_id": "6513270e-269e-4d37-b2a7-4de452e6b438", "customer_id": "c", "customer_email": "a@b.cd", ' \
           b'"pickup": {"lat": 40.75, "lon": -73.98, "zone": "z"}, "dropoff": {"lat": 40.76, "lon": -73.97, ' \
           b'"zone": "z"}, "requested_at": "2026-12-01T00:00:00Z"}'
    with pytest.raises(schemas.PoisonRecord) as e:
        schemas.decode(schemas.RideRequest, b"another-key", good)
    return str(e.value)


def test_reason_classes_are_few_and_distinct():
    names = [name for name, _ in REASON_CLASSES] + [OTHER_REASON]
    assert len(set(names)) == len(names) <= 10  # a label value per class, never per record


def test_dead_letters_counted_by_topic_and_reason_class(watch):
    watch.dead_letter("ride_details.dlq", "RideRequest invalid: value: Invalid JSON")
    watch.dead_letter("ride_details.dlq", "RideRequest invalid: pickup.lat: too big")
    watch.dead_letter("ride_details.dlq", "empty value (tombstone): expected a JSON object")
    assert samples(watch, "rides_dead_letters_total") == {
        (("reason", "invalid"), ("script", "transaction.py"), ("topic", "ride_details.dlq")): 2,
        (("reason", "tombstone"), ("script", "transaction.py"), ("topic", "ride_details.dlq")): 1}


def test_health_ok_while_the_loop_comes_round_and_503_once_it_does_not():
    clock = Clock()
    health = Health(unreachable_after=60, clock=clock)
    assert health.status()[0]
    clock.now += STALL_AFTER - 1
    assert health.status()[0]
    clock.now += 2
    healthy, why = health.status()
    assert not healthy and why.startswith(f"stuck: the loop has not come round for {STALL_AFTER + 1:.0f} s")
    health.beat()
    assert health.status()[0]


def test_health_tolerates_an_outage_up_to_the_wait_then_says_kafka_is_unreachable():
    clock = Clock()
    health = Health(unreachable_after=90, clock=clock)
    health.kafka(False, lost_at=clock.now)
    clock.now += STALL_AFTER + 10  # no beat: the loop waits in mid-batch for Kafka, which is not "stuck"
    healthy, why = health.status()
    assert healthy and why == f"ok: Kafka unreachable for {STALL_AFTER + 10:.0f} s, within the 90 s wait"
    clock.now = health.last_beat + 91
    assert health.status() == (False, "Kafka unreachable for 91 s, longer than the 90 s wait")
    health.kafka(True)
    health.beat()
    assert health.status()[0]


def test_health_says_stopping_once_the_script_stops(watch):
    watch.stopping("asked to stop (SIGINT/SIGTERM)")
    assert watch.health.status() == (False, "stopping: asked to stop (SIGINT/SIGTERM)")


def test_kafka_back_after_an_outage_counts_one_reconnect_and_reachable_follows(watch):
    consumer = object()
    watch.kafka(consumer, True)  # reachable from the start: no reconnect
    watch.kafka(consumer, False)
    assert samples(watch, "rides_kafka_reachable") == {(("script", "transaction.py"),): 0}
    watch.kafka(consumer, True)
    assert samples(watch, "rides_kafka_reconnects_total") == {(("script", "transaction.py"),): 1}
    assert samples(watch, "rides_kafka_reachable") == {(("script", "transaction.py"),): 1}


def test_kafka_is_back_only_once_every_client_that_lost_it_has_it_back(watch):
    # transaction.py's producer can lose Kafka in mid-batch while its consumer never does, and the other way round.
    consumer, producer = object(), object()
    watch.kafka(producer, False)
    watch.kafka(consumer, False)
    watch.kafka(consumer, True)
    assert samples(watch, "rides_kafka_reachable") == {(("script", "transaction.py"),): 0}
    assert watch.health.kafka_lost_at is not None
    watch.kafka(producer, True)
    assert samples(watch, "rides_kafka_reachable") == {(("script", "transaction.py"),): 1}
    assert watch.health.kafka_lost_at is None
    assert samples(watch, "rides_kafka_reconnects_total") == {(("script", "transaction.py"),): 1}  # one outage


def test_an_unreadable_records_stand_in_without_a_timestamp_says_nothing_of_the_lag_age(watch):
    clock = watch.clock
    stand_in = record("t", 0, 7, -1)  # common.consume.stand_in_for_unreadable: timestamp -1
    watch.polled([stand_in])
    watch.processed({("t", 0): 5}, [stand_in])
    assert watch.lag_seconds() == 0
    real = record("t", 0, 8, int((clock.now - 12) * 1000))
    watch.polled([stand_in, real])
    assert watch.lag_seconds() == pytest.approx(12, abs=0.01)  # the real ride is the oldest waiting
    watch.processed({("t", 0): 5}, [stand_in, real])
    assert watch.lag_seconds() == pytest.approx(12, abs=0.01)


def test_an_smtp_attempt_is_progress_for_health(watch):
    watch.health.last_beat -= STALL_AFTER + 5  # a long batch of emails
    assert not watch.health.status()[0]
    watch.delivery("delivered")
    assert watch.health.status()[0]


def test_a_metrics_port_in_use_is_one_line_naming_the_flag(watch):
    url = watch.serve("127.0.0.1", 0)
    other = Watch("email.py", "email", unreachable_after=60, registry=CollectorRegistry())
    try:
        with pytest.raises(Fatal, match=r"cannot serve metrics on 127\.0\.0\.1:\d+ .*pick another --metrics-port"):
            other.serve("127.0.0.1", int(url.rsplit(":", 1)[1]))
    finally:
        watch.stop()


def test_reachability_lines_reach_the_listeners_once_each():
    heard: list[bool] = []
    stop = reachability.listen(lambda state, up: heard.append(up))
    try:
        clock = Clock(0)
        state = reachability.Reachability("k:9092", grace=2, clock=clock)
        for t, up in [(0, True), (1, False), (2, False), (4, False), (5, False), (6, True), (7, True)]:
            clock.now = t
            state.update(up)
    finally:
        stop()
    assert heard == [False, True]
    state.update(False)
    assert heard == [False, True]  # stopped listening


def test_smtp_attempts_are_told_delivered_retried_refused_failed():
    import smtplib

    def flaky(fails: int, error: Exception):
        calls = {"n": 0}

        def deliver(_message, _ride_id):
            calls["n"] += 1
            if calls["n"] <= fails:
                raise error
            return "smtp://x"
        return deliver

    told: list[str] = []
    mail.deliver_with_retries(flaky(2, OSError("down")), {"To": "a@b.cd"}, "r", lambda s: False, tell=told.append)
    assert told == ["retried", "retried", "delivered"]
    told.clear()
    with pytest.raises(mail.Refused):
        mail.deliver_with_retries(flaky(9, smtplib.SMTPRecipientsRefused({"a@b.cd": (550, b"no")})),
                                  {"To": "a@b.cd"}, "r", lambda s: False, tell=told.append)
    assert told == ["refused"]
    told.clear()
    with pytest.raises(mail.Fatal):
        mail.deliver_with_retries(flaky(9, OSError("down")), {"To": "a@b.cd"}, "r", lambda s: False,
                                  tell=told.append, attempts=3)
    assert told == ["retried", "retried", "failed"]


def test_consumer_lags_from_its_high_watermarks_and_positions():
    from kafka.structs import OffsetAndMetadata, TopicPartition

    def state(highwater, position):
        return SimpleNamespace(highwater=highwater,
                               position=None if position is None else OffsetAndMetadata(position, "", -1))

    consumer = SimpleNamespace(_subscription=SimpleNamespace(assignment={
        TopicPartition("t", 0): state(120, 100), TopicPartition("t", 1): state(50, 50),
        TopicPartition("t", 2): state(None, 7),  # not fetched yet: unknown, not 0
    }))
    assert consume.lags(consumer) == {("t", 0): 20, ("t", 1): 0}


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_the_server_answers_metrics_healthz_and_404_on_loopback_then_stops(watch):
    watch.count(Tally(confirmed=4), {"confirmed": "confirmed"})
    url = watch.serve("127.0.0.1", 0)
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        status, kind, body = get(f"{url}/metrics")
        assert status == 200 and kind.startswith("text/plain")
        assert 'rides_processed_total{outcome="confirmed",script="transaction.py"} 4.0' in body
        assert "process_resident_memory_bytes" in body  # the process' own, for the dashboard's memory panel
        assert get(f"{url}/healthz")[:1] == (200,)
        watch.stopping("asked to stop (SIGINT/SIGTERM)")
        assert get(f"{url}/healthz") == (503, "text/plain; charset=utf-8", "stopping: asked to stop (SIGINT/SIGTERM)\n")
        assert get(f"{url}/")[0] == 404
    finally:
        watch.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/healthz", timeout=2)
