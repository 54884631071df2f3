"""--metrics-port against the real broker: every script serves /metrics and /healthz while the pipeline runs,
its counters equal what the topics hold (and its own summary line), and consumer lag returns to 0."""

from __future__ import annotations

import pytest

from tests.integration.pipeline import (
    Script,
    consumers,
    health,
    metrics_url,
    parse_summary,
    produce_raw,
    read_all,
    sample,
    scrape,
    unique_prefix,
    wait_until,
)

pytestmark = pytest.mark.integration

RIDES = 300
# Bad requests, each set aside by transaction.py in ride_details.dlq: 3 not JSON, 2 of the wrong schema.
POISON = [(b"bad-1", b"{oops"), (b"bad-2", b"\xff\xfe"), (b"bad-3", b"[]"),
          (b"bad-4", b'{"ride_id": "not-a-uuid"}'), (b"bad-5", b'{"ride_id": 7, "customer_id": 8}')]


def test_every_script_serves_counts_equal_to_the_topics_and_lag_returns_to_zero(kafka_bootstrap, tmp_path):
    prefix = unique_prefix("metrics")
    flags = ("--metrics-port", "0")
    with consumers(kafka_bootstrap, prefix, tmp_path, *flags) as (tx, em, an):
        urls = {"transaction.py": metrics_url(tx), "email.py": metrics_url(em), "analysis.py": metrics_url(an)}
        for url in urls.values():
            assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
            assert health(url)[0] == 200  # idle with Kafka reachable is healthy
        tx.wait_for_log(r"partitions assigned: \S*ride_details\[")
        produce_raw(kafka_bootstrap, prefix + "ride_details", POISON)
        with Script("rides.py", *flags, "--count", str(RIDES), "--rate", "100", "--seed", "11",
                    bootstrap=kafka_bootstrap, prefix=prefix) as rides:
            rides_url = metrics_url(rides)
            while_running = scrape(rides_url)  # rides.py exits once its rides are acknowledged: one look now
            assert health(rides_url)[0] == 200
            rides.wait(timeout=60)
        produced = parse_summary(rides.log())
        assert produced["acknowledged"] == RIDES
        assert 0 <= sample(while_running, "rides_processed_total", script="rides.py", outcome="acknowledged") <= RIDES

        def caught_up() -> bool:
            t, e, a = (scrape(urls[s]) for s in ("transaction.py", "email.py", "analysis.py"))
            decided = sample(t, "rides_processed_total", outcome="confirmed") + \
                sample(t, "rides_processed_total", outcome="rejected")
            confirmed = sample(t, "rides_processed_total", outcome="confirmed")
            return decided == RIDES and sample(e, "rides_processed_total", outcome="emailed") == confirmed and \
                sample(a, "rides_processed_total", outcome="analysed") == confirmed and \
                all(sample(m, "rides_consumer_lag_records") == 0 for m in (t, e, a))

        wait_until(caught_up, timeout=120, what="every ride decided, emailed and analysed, with no lag")
        confirmed = read_all(kafka_bootstrap, prefix + "ride_confirmed")
        rejected = read_all(kafka_bootstrap, prefix + "ride_rejected")
        letters = read_all(kafka_bootstrap, prefix + "ride_details.dlq")
        assert len(confirmed) + len(rejected) == RIDES and len(letters) == len(POISON)

        t, e, a = (scrape(urls[s]) for s in ("transaction.py", "email.py", "analysis.py"))
        assert sample(t, "rides_processed_total", script="transaction.py", outcome="confirmed") == len(confirmed)
        assert sample(t, "rides_processed_total", outcome="rejected") == len(rejected)
        assert sample(t, "rides_processed_total", outcome="dead_lettered") == len(letters)
        assert sample(t, "rides_dead_letters_total", topic=prefix + "ride_details.dlq", reason="invalid") == len(POISON)
        assert sample(t, "rides_transactions_total", outcome="committed") >= 1
        assert sample(e, "rides_processed_total", script="email.py", outcome="emailed") == len(confirmed)
        assert sample(a, "rides_processed_total", script="analysis.py", outcome="analysed") == len(confirmed)
        # Lag: every partition of each group's topic is listed, and all at 0; so is its age.
        for scraped, group, topic, partitions in ((t, f"{prefix}tx", "ride_details", 6),
                                                  (e, f"{prefix}email", "ride_confirmed", 6),
                                                  (a, f"{prefix}analysis", "ride_confirmed", 6)):
            lags = {dict(ls)["partition"]: v for (n, ls), v in scraped.items() if n == "rides_consumer_lag_records"
                    and dict(ls)["group"] == group and dict(ls)["topic"] == prefix + topic}
            assert lags == {str(p): 0 for p in range(partitions)}, group
            assert sample(scraped, "rides_consumer_lag_seconds", group=group) == 0
        # The end-to-end histogram has each ride once per stage, each later than it was requested.
        for scraped, stage in ((t, "confirmed"), (e, "emailed"), (a, "analysed")):
            assert sample(scraped, "rides_end_to_end_seconds_count", stage=stage) == len(confirmed), stage
            assert sample(scraped, "rides_end_to_end_seconds_sum", stage=stage) > 0
            assert sample(scraped, "rides_batch_duration_seconds_count") >= 1
        for url in urls.values():
            assert health(url)[0] == 200

        tx.stop()
        em.stop()
        an.stop()
    # The summary lines, the scripts' own closing words, say what the counters said.
    assert parse_summary(tx.log())["confirmed"] == len(confirmed)
    assert parse_summary(tx.log())["dead_lettered"] == len(letters)
    assert parse_summary(em.log())["emailed"] == len(confirmed)
    assert parse_summary(an.log())["total"] == len(confirmed)
