"""Scripts started before Kafka is up: one log line each, retries with backoff, then work when it appears.

(Giving up after --wait, and a broker restart in mid-stream, are tested with each script and in the chaos
test; this is the "start everything, then the broker" order people hit on their first try.)
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter

import pytest

from tests.integration.pipeline import (
    Script,
    health,
    keys,
    metrics_url,
    parse_summary,
    read_all,
    sample,
    scrape,
    unique_prefix,
    wait_until,
)
from tools.broker import free_port

pytestmark = pytest.mark.chaos  # the broker goes away under the scripts: `make chaos`, not `make test`

RIDES = 50
WAITING = r"Kafka is not reachable at \S+ yet"
OUTAGE = 10.0  # seconds of the outage whose CPU is measured


@pytest.fixture
def late_broker(own_broker):
    """A broker of this test's own, on a port chosen now and started only when the test says so."""
    return own_broker, free_port()


def test_scripts_started_before_the_broker_wait_for_it_then_work(late_broker, tmp_path):
    broker, port = late_broker
    bootstrap = f"127.0.0.1:{port}"
    prefix = unique_prefix("outage")
    scripts = {
        "transaction": Script("transaction.py", "--wait", "120", bootstrap=bootstrap, prefix=prefix, log_dir=tmp_path),
        "email": Script("email.py", "--wait", "120", "--outbox", str(tmp_path / "outbox"), bootstrap=bootstrap,
                        prefix=prefix, log_dir=tmp_path),
        "analysis": Script("analysis.py", "--wait", "120", "--state", str(tmp_path / "analysis.db"),
                           bootstrap=bootstrap, prefix=prefix, log_dir=tmp_path),
        "rides": Script("rides.py", "--wait", "120", "--count", str(RIDES), "--seed", "3", bootstrap=bootstrap,
                        prefix=prefix, log_dir=tmp_path),
    }
    try:
        for script in scripts.values():
            script.wait_for_log(WAITING, timeout=60)
        broker.start(port=port)

        scripts["rides"].wait(timeout=120)
        wait_until(lambda: len(list((tmp_path / "outbox").glob("*.eml")))
                   + len(read_all(bootstrap, prefix + "ride_rejected", quiet=0.5)) >= RIDES,
                   timeout=120, what="every ride emailed or rejected")
        for name in ("transaction", "email", "analysis"):
            scripts[name].stop()
    finally:
        for script in scripts.values():
            script.kill()

    for name, script in scripts.items():
        log = script.log()
        # Said once, not once per retry; and no traceback anywhere.
        assert len(re.findall(WAITING, log)) == 1, f"{name}:\n{log}"
        assert "Traceback" not in log, f"{name}:\n{log}"
    decided = Counter(keys(read_all(bootstrap, prefix + "ride_confirmed"))
                      + keys(read_all(bootstrap, prefix + "ride_rejected")))
    assert len(decided) == RIDES and max(decided.values()) == 1


def test_sigterm_while_the_broker_is_down_stops_within_10_s_and_loses_nothing(late_broker, tmp_path):
    broker, port = late_broker
    bootstrap = broker.start(port=port)
    prefix = unique_prefix("down")
    rides = Script("rides.py", "--count", "1500", "--rate", "100", "--seed", "5", bootstrap=bootstrap, prefix=prefix,
                   log_dir=tmp_path)
    tx = Script("transaction.py", bootstrap=bootstrap, prefix=prefix, log_dir=tmp_path)
    try:
        wait_until(lambda: len(read_all(bootstrap, prefix + "ride_confirmed", quiet=0.3)) >= 200, timeout=60,
                   what="transaction.py confirming")
        broker.stop()
        started = time.monotonic()
        code = tx.stop(timeout=10, expect=None)  # fails the test unless it exits within 10 s
        log = tx.log()
        assert "Traceback" not in log, log
        if code != 0:  # it could not commit: it says so in one line, and exits 1
            assert code == 1 and len(re.findall(r"exiting without the final commit", log)) == 1, log
        assert time.monotonic() - started < 10

        broker.start(port=port)  # the same address and data: rides.py was retrying meanwhile
        with Script("transaction.py", bootstrap=bootstrap, prefix=prefix, log_dir=tmp_path) as again:
            rides.wait(timeout=120)
            requested = set(keys(read_all(bootstrap, prefix + "ride_details")))
            wait_until(lambda: set(keys(read_all(bootstrap, prefix + "ride_confirmed", quiet=0.5)))
                       | set(keys(read_all(bootstrap, prefix + "ride_rejected", quiet=0.5))) >= requested,
                       timeout=120, what="every ride decided after the restart")
            again.stop()
    finally:
        rides.kill()
        tx.kill()

    decided = Counter(keys(read_all(bootstrap, prefix + "ride_confirmed"))
                      + keys(read_all(bootstrap, prefix + "ride_rejected")))
    assert set(decided) == requested and max(decided.values()) == 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all threads (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = open(f"/proc/{pid}/stat").read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads CPU time from /proc")
def test_rides_py_idles_while_the_broker_is_down(late_broker, tmp_path):
    broker, port = late_broker
    bootstrap = broker.start(port=port)
    prefix = unique_prefix("idle")
    with Script("rides.py", "--rate", "50", bootstrap=bootstrap, prefix=prefix, log_dir=tmp_path) as rides:
        rides.wait_for_log(r"progress: requested=\d+ acknowledged=[1-9]")
        broker.stop()
        before, started = cpu_seconds(rides.pid), time.monotonic()
        time.sleep(OUTAGE)  # the window measured, not a wait for a condition
        share = (cpu_seconds(rides.pid) - before) / (time.monotonic() - started)
        assert rides.running, rides.log()
        # Before the fix the producer's I/O thread spun through the whole outage: 100 % of a core.
        assert share < 0.15, f"rides.py used {share:.0%} of a core while Kafka was down"


@pytest.mark.parametrize("sig, rate", [(signal.SIGINT, "50"), (signal.SIGTERM, "50"), (signal.SIGINT, "0")],
                         ids=["SIGINT", "SIGTERM", "SIGINT-full-speed"])
def test_rides_py_stopped_during_an_outage_exits_0_with_its_summary(late_broker, tmp_path, sig, rate):
    # At full speed (--rate 0, the default) the outage lasts long enough to fill the producer's buffer
    # several times over: send() must never be left to block, deaf to the stop.
    broker, port = late_broker
    bootstrap = broker.start(port=port)
    with Script("rides.py", "--rate", rate, bootstrap=bootstrap, prefix=unique_prefix("stop"),
                log_dir=tmp_path) as rides:
        rides.wait_for_log(r"progress: requested=\d+ acknowledged=[1-9]")
        broker.stop()
        # One more progress line: five more seconds of rides that nobody can acknowledge.
        progressed = len(re.findall("progress:", rides.log()))
        wait_until(lambda: len(re.findall("progress:", rides.log())) > progressed + 4 * (rate == "0"), timeout=60,
                   what="rides.py sending during the outage")
        rides.stop(sig=sig)  # asserts exit 0 within 10 s
        log = rides.log()

    assert "Traceback" not in log and "Exception ignored" not in log, log
    summary = parse_summary(log)
    assert summary["unacknowledged"] > 0, log
    assert summary["requested"] == summary["acknowledged"] + summary["failed"] + summary["unacknowledged"], log
    said = re.search(r"WARNING.*unacknowledged.*", log)
    assert said and "may or may not" in said.group(0), log
    assert "next run" not in log and "will be sent" not in log, log


def test_healthz_turns_503_once_kafka_is_gone_longer_than_the_wait_and_200_once_it_is_back(late_broker, tmp_path):
    broker, port = late_broker
    bootstrap = broker.start(port=port)
    prefix = unique_prefix("health")
    flags = ("--metrics-port", "0", "--wait", "3")
    # transaction.py with rides flowing: the outage may find it polling (its consumer sees it go) or flushing a
    # batch (only its producer does); email.py idle. Either way each must be healthy again once Kafka is back.
    with Script("email.py", *flags, "--outbox", str(tmp_path / "outbox"), bootstrap=bootstrap, prefix=prefix,
                log_dir=tmp_path) as email, \
            Script("transaction.py", *flags, bootstrap=bootstrap, prefix=prefix, log_dir=tmp_path) as tx, \
            Script("rides.py", "--rate", "50", bootstrap=bootstrap, prefix=prefix, log_dir=tmp_path) as rides:
        urls = {"email.py": metrics_url(email), "transaction.py": metrics_url(tx)}
        email.wait_for_log(r"partitions assigned: \S+ride_confirmed\[")
        wait_until(lambda: sample(scrape(urls["transaction.py"]), "rides_processed_total", outcome="confirmed") > 20,
                   timeout=60, what="transaction.py confirming")
        assert all(health(url)[0] == 200 for url in urls.values())
        broker.stop()
        # Within the wait the loop still comes round (or waits in mid-batch for Kafka): healthy. Past it: 503.
        for script, url in urls.items():
            wait_until(lambda url=url: health(url)[0] == 503, timeout=60, what=f"{script}: 503 with Kafka gone")
            status, why = health(url)
            assert re.fullmatch(r"Kafka unreachable for \d+ s, longer than the 3 s wait", why), (script, why)
            assert sample(scrape(url), "rides_kafka_reachable", script=script) == 0
        assert email.running and tx.running  # unhealthy, not dead: they wait for Kafka

        broker.start(port=port)  # the same address and data
        for script, url in urls.items():
            wait_until(lambda url=url: health(url)[0] == 200, timeout=90, what=f"{script}: 200 with Kafka back")
            scraped = scrape(url)
            assert sample(scraped, "rides_kafka_reachable", script=script) == 1
            assert sample(scraped, "rides_kafka_reconnects_total", script=script) == 1
        rides.stop()
        tx.stop()
        email.stop()
