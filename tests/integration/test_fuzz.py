"""Fuzz: floods the running pipeline with hostile records, interleaved with valid rides.

Over 1,000 malformed or hostile ride requests (tests/integration/hostile.py: random bytes, non-UTF-8,
wrong types, missing fields, huge/negative/NaN numbers, deep nesting, oversized strings, wrong
schema_version, unsafe emails and timestamps, key != ride_id, null key, empty value, forged dead-letter
headers) go to ride_details among valid and odd-but-valid requests, and hostile RideConfirmed-shaped
records go to ride_confirmed among odd-but-valid confirmations, while transaction.py, email.py and
analysis.py run as real subprocesses. Then:
- every hostile record is in the right .dlq topic, once per consumer group that read it, with its
  original key and value and a dead-letter reason, and nothing else is dead-lettered;
- no script crashed: all three still run at the end and exit 0 on SIGTERM;
- `python -m tools.dlq list` shows every one of them on one short, printable line;
- every valid request is confirmed or rejected exactly once (read_committed), every confirmed ride
  emailed once, and analysis.py counted each one;
- valid requests sent again (a client retrying) are dropped as duplicates, and other riders' requests
  under their ride_ids are dead-lettered with the reason: still one decision per ride.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from common import clients, schemas, topics
from common.clients import admin
from common.dead_letters import GROUP, OUR_HEADERS, REASON, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC
from common.settings import Settings
from tests.integration import hostile
from tests.integration.pipeline import Script, parse_summary, unique_prefix

pytestmark = pytest.mark.fuzz

SEED = 20250601
HOSTILE_REQUESTS = 1000
HOSTILE_CONFIRMATIONS = 150
VALID_REQUESTS = 300
REPEATS = 50      # of the valid requests: resent as they were, and sent again by another rider each
DEADLINE = 150.0  # seconds for the pipeline to work through everything (it needs ~10 on an idle laptop)
QUIET = 5.0       # then this long with nothing new, so that late duplicates would be seen too


class Sent:
    """What the test produced: per topic, (partition, offset) -> the record as sent."""

    def __init__(self) -> None:
        self.by_position: dict[str, dict[tuple[int, int], hostile.Fuzzed]] = {}

    def produce(self, bootstrap: str, topic: str, records: list[hostile.Fuzzed]) -> None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="tests-fuzz", linger_ms=20)
        try:
            futures = [(r, producer.send(topic, key=r.key, value=r.value, headers=r.headers)) for r in records]
            producer.flush(timeout=120)
            positions = self.by_position.setdefault(topic, {})
            for r, f in futures:
                meta = f.get(timeout=30)
                positions[(meta.partition, meta.offset)] = r
        finally:
            producer.close()


class Collector:
    """Reads several topics from the beginning as the pipeline fills them (read_committed, no group)."""

    def __init__(self, bootstrap: str, names: list[str]) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      isolation_level="read_committed", client_id="tests-fuzz-collector")
        tps = [TopicPartition(t, p) for t in names for p in sorted(self.consumer.partitions_for_topic(t))]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records: dict[str, list] = {t: [] for t in names}

    def poll(self) -> bool:
        """Read what is there; True if anything new arrived."""
        new = False
        for tp, records in self.consumer.poll(timeout_ms=500, max_records=2000).items():
            self.records[tp.topic].extend(records)
            new = True
        return new

    def close(self) -> None:
        self.consumer.close()


def header(record, name: str) -> list[bytes]:
    return [v for k, v in record.headers or [] if k == name]


def source_position(letter) -> tuple[int, int]:
    """(partition, offset) of the record a dead letter was made of."""
    return int(header(letter, SOURCE_PARTITION)[0]), int(header(letter, SOURCE_OFFSET)[0])


def fuzzed(message: schemas.Message, kind: str) -> hostile.Fuzzed:
    return hostile.Fuzzed(kind, schemas.ride_key(message.ride_id), schemas.encode(message))


def test_hostile_records_are_dead_lettered_and_valid_rides_still_flow(kafka_bootstrap, tmp_path: Path):
    started = time.monotonic()
    rng = random.Random(SEED)
    hostile_requests = hostile.hostile_requests(rng, HOSTILE_REQUESTS)
    hostile_confirmations = hostile.hostile_confirmations(rng, HOSTILE_CONFIRMATIONS)
    valid_requests = [hostile.valid_request(rng) for _ in range(VALID_REQUESTS)] + hostile.odd_requests(rng)
    odd_confirmations = hostile.odd_confirmations(rng)
    # A valid ride may carry headers of its own: they must not make it a dead letter.
    ride_details_input = hostile.interleave(
        rng, hostile_requests, [fuzzed(r, "valid") for r in valid_requests])
    ride_confirmed_input = hostile.interleave(
        rng, hostile_confirmations, [fuzzed(c, "valid") for c in odd_confirmations])
    request_ids = {str(r.ride_id) for r in valid_requests}
    injected_ids = {str(c.ride_id) for c in odd_confirmations}

    prefix = unique_prefix("fuzz")
    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    a = admin(settings)
    try:
        clients.create_topics(a, settings)
    finally:
        a.close()
    t = settings.topic
    groups = {name: f"{prefix}{name}" for name in ("transaction", "email", "analysis")}
    outbox, state = tmp_path / "outbox", tmp_path / "analysis.db"

    scripts: list[Script] = []
    collector = None
    try:
        common_args = dict(bootstrap=kafka_bootstrap, prefix=prefix, log_dir=tmp_path)
        scripts = [
            Script("transaction.py", group_id=groups["transaction"], **common_args),
            Script("email.py", "--outbox", str(outbox), "--ledger", str(tmp_path / "ledger.sqlite3"),
                   group_id=groups["email"], **common_args),
            Script("analysis.py", "--state", str(state), group_id=groups["analysis"], **common_args),
        ]
        # The scripts are already consuming while the flood arrives.
        sent = Sent()
        sent.produce(kafka_bootstrap, t(topics.RIDE_DETAILS), ride_details_input)
        sent.produce(kafka_bootstrap, t(topics.RIDE_CONFIRMED), ride_confirmed_input)
        # After the originals (same key, same partition: read after them): resent and conflicting requests.
        repeated = valid_requests[:REPEATS]
        sent.produce(kafka_bootstrap, t(topics.RIDE_DETAILS), hostile.interleave(
            rng, [fuzzed(r, "valid") for r in hostile.resent(rng, repeated)],
            [fuzzed(r, "another request under a decided ride_id") for r in hostile.conflicting(rng, repeated)]))

        details_dlq = t(topics.dead_letter_topic(topics.RIDE_DETAILS))
        confirmed_dlq = t(topics.dead_letter_topic(topics.RIDE_CONFIRMED))
        collector = Collector(kafka_bootstrap, [details_dlq, confirmed_dlq, t(topics.RIDE_CONFIRMED),
                                                t(topics.RIDE_REJECTED)])

        def outcomes() -> list:
            return [r for name in (topics.RIDE_CONFIRMED, topics.RIDE_REJECTED) for r in collector.records[t(name)]
                    if r.key is not None and r.key.decode(errors="replace") in request_ids]

        def done() -> bool:
            return (len(collector.records[details_dlq]) >= len(hostile_requests) + REPEATS
                    and len(collector.records[confirmed_dlq]) >= 2 * len(hostile_confirmations)
                    and len({r.key for r in outcomes()}) >= len(request_ids))

        deadline = time.monotonic() + DEADLINE
        last_new = time.monotonic()
        while not done() or time.monotonic() - last_new < QUIET:
            if collector.poll():
                last_new = time.monotonic()
            crashed = [s for s in scripts if not s.running]
            assert not crashed, "\n\n".join(f"{s.name} exited {s.process.returncode}:\n{s.log()[-3000:]}"
                                            for s in crashed)
            assert time.monotonic() < deadline, (
                f"not done after {DEADLINE:.0f} s: {len(collector.records[details_dlq])}/{len(hostile_requests)} "
                f"in {details_dlq}, {len(collector.records[confirmed_dlq])}/{2 * len(hostile_confirmations)} in "
                f"{confirmed_dlq}, {len({r.key for r in outcomes()})}/{len(request_ids)} requests decided")

        # ------------------------------------------------------------------- dead letters: exact
        def check_dead_letters(dlq: str, source: str, group: str, expected: dict) -> None:
            letters = [r for r in collector.records[dlq] if header(r, GROUP) == [group.encode()]]
            positions = Counter(
                (int(header(r, SOURCE_PARTITION)[0]), int(header(r, SOURCE_OFFSET)[0])) for r in letters)
            twice = [p for p, n in positions.items() if n > 1]
            assert not twice, f"{group}: dead-lettered more than once: {twice[:10]}"
            unexpected = set(positions) - set(expected)
            assert not unexpected, f"{group}: dead-lettered valid records: {sorted(unexpected)[:10]}"
            missing = set(expected) - set(positions)
            assert not missing, (f"{group}: hostile records not dead-lettered: "
                                 f"{[(p, expected[p].kind) for p in sorted(missing)][:10]}")
            for r in letters:
                original = expected[(int(header(r, SOURCE_PARTITION)[0]), int(header(r, SOURCE_OFFSET)[0]))]
                assert header(r, SOURCE_TOPIC) == [source.encode()]
                assert (r.key, r.value) == (original.key, original.value), original.kind
                reasons = header(r, REASON)
                # One reason, ours: a forged dlq.* header of the hostile record never survives.
                assert len(reasons) == 1 and reasons[0] and not reasons[0].startswith((b"forged", b"all is well"))
                assert [h for h in r.headers if h[0] not in OUR_HEADERS] == \
                       [h for h in original.headers if h[0] not in OUR_HEADERS]

        hostile_in = {
            name: {p: f for p, f in sent.by_position[t(name)].items() if f.kind != "valid"}
            for name in (topics.RIDE_DETAILS, topics.RIDE_CONFIRMED)
        }
        assert len(hostile_in[topics.RIDE_DETAILS]) == HOSTILE_REQUESTS + REPEATS
        check_dead_letters(details_dlq, t(topics.RIDE_DETAILS), groups["transaction"],
                           hostile_in[topics.RIDE_DETAILS])
        for name in ("email", "analysis"):
            check_dead_letters(confirmed_dlq, t(topics.RIDE_CONFIRMED), groups[name],
                               hostile_in[topics.RIDE_CONFIRMED])
        assert len(collector.records[details_dlq]) == HOSTILE_REQUESTS + REPEATS  # none of any other group
        assert len(collector.records[confirmed_dlq]) == 2 * HOSTILE_CONFIRMATIONS

        # ------------------------------------------------------- valid rides: decided exactly once
        decided = Counter(r.key.decode() for r in outcomes())
        assert set(decided) == request_ids and max(decided.values()) == 1, \
            f"decided more than once: {[k for k, n in decided.items() if n > 1][:10]}"
        injected_positions = set(sent.by_position[t(topics.RIDE_CONFIRMED)])
        from_transaction = [r for r in collector.records[t(topics.RIDE_CONFIRMED)]
                            if (r.partition, r.offset) not in injected_positions]
        # Nothing but the valid requests came out of transaction.py (no hostile record leaked through).
        assert {r.key.decode() for r in from_transaction} <= request_ids
        assert all(r.key is not None and r.key.decode() in request_ids
                   for r in collector.records[t(topics.RIDE_REJECTED)])
        confirmed_ids = {r.key.decode() for r in from_transaction} | injected_ids
        assert len(from_transaction) >= VALID_REQUESTS * 0.9  # rides.py's rides: ~2 % outside the area

        # ------------------------------------------- emailed once each, counted once each: then stop
        wait_for = time.monotonic() + 60
        while {p.stem for p in outbox.glob("*.eml")} != confirmed_ids and time.monotonic() < wait_for:
            time.sleep(0.5)
        for s in scripts:
            assert s.running, f"{s.name} exited {s.process.returncode}:\n{s.log()[-3000:]}"
        for s in scripts:
            s.stop()
        summaries = {s.name: parse_summary(s.log()) for s in scripts}

        assert {p.stem for p in outbox.glob("*.eml")} == confirmed_ids
        assert summaries["email.py"]["emailed"] == len(confirmed_ids)
        assert summaries["email.py"]["dead_lettered"] == HOSTILE_CONFIRMATIONS
        assert summaries["analysis.py"]["total"] == len(confirmed_ids)
        assert summaries["analysis.py"]["dead_lettered"] == HOSTILE_CONFIRMATIONS
        tx = summaries["transaction.py"]
        assert tx["dead_lettered"] == HOSTILE_REQUESTS + REPEATS and tx["duplicates"] == REPEATS
        assert int(tx["confirmed"]) + int(tx["rejected"]) == len(request_ids)
        conflicts = [r for r in collector.records[details_dlq]
                     if hostile_in[topics.RIDE_DETAILS][source_position(r)].kind.startswith("another request")]
        assert len(conflicts) == REPEATS
        assert all(b"already decided for a different request" in header(r, REASON)[0] for r in conflicts)
        # The people's view of the same dead letters: one short, printable line each, hostile bytes escaped.
        with Script("tools.dlq", "list", topics.dead_letter_topic(topics.RIDE_DETAILS), **common_args) as dlq:
            dlq.wait(timeout=90)
        lines = dlq.stdout().splitlines()
        assert len(lines) == HOSTILE_REQUESTS + REPEATS
        assert all(line.isprintable() and len(line) < 600 for line in lines)
        print(f"fuzz: {HOSTILE_REQUESTS} + {REPEATS} + {HOSTILE_CONFIRMATIONS} hostile records dead-lettered, "
              f"{len(request_ids)} requests decided ({tx['confirmed']} confirmed), {len(confirmed_ids)} emailed "
              f"and counted, in {time.monotonic() - started:.0f} s")
    finally:
        if collector is not None:
            collector.close()
        for s in scripts:
            s.kill()
