"""The pipeline against a secure broker (tools.broker --secure: SASL_SSL, a throwaway CA, the SCRAM user `rides`),
and the three mistakes that must stop a script at once, in one line naming the cause, instead of "waiting for
Kafka": a wrong password, a CA the client does not trust, and plaintext against the TLS port.

The module starts a broker of its own (the session's speaks PLAINTEXT) and stops it at the end."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from common.stats import load_state
from tests.integration.pipeline import Script, parse_summary, unique_prefix, wait_until
from tools.broker import BrokerError, LocalBroker

# What "at once" means here: Python's start, one attempt to connect (5 s, common.clients.ATTEMPT_TIMEOUT_MS)
# and the diagnosis (about 8 s in all on a loaded 2-core machine); far below --wait's 60 s, which a broker that
# is down gets.
AT_ONCE = 15.0
RIDES = 50


@pytest.fixture(scope="module")
def secure_broker(launcher_available, tmp_path_factory) -> Iterator[LocalBroker]:
    broker = LocalBroker(data_dir=tmp_path_factory.mktemp("secure-kafka") / "data", secure=True)
    try:
        try:
            broker.start(port=0)
        except BrokerError as e:
            pytest.fail(f"cannot start the secure broker: {e}", pytrace=False)
        yield broker
    finally:
        broker.stop()


def read_keys(broker: LocalBroker, topics: list[str], done=lambda keys: True, timeout: float = 60.0) -> Counter:
    """How often each key occurs in the topics (read_committed, over SASL_SSL), read from their beginning until
    done(keys) holds and then to their end as of that moment; one consumer throughout (each new one is a TLS
    handshake and a SCRAM login)."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, **broker.client_options(), group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed", client_id="tests-secure")
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        keys: Counter = Counter()
        deadline = time.monotonic() + timeout
        end: dict | None = None
        while end is None or any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"{topics}: {dict(keys)} after {timeout:.0f} s"
            for records in consumer.poll(timeout_ms=200).values():
                keys.update(r.key.decode() for r in records)
            if end is None and done(keys):
                end = consumer.end_offsets(tps)  # read_committed: the last stable offsets
        return keys
    finally:
        consumer.close()


def outputs(*scripts: Script) -> str:
    return "".join(s.log() + s.stdout() for s in scripts)


def test_the_pipeline_and_the_api_over_sasl_ssl(secure_broker, tmp_path):
    broker, env = secure_broker, secure_broker.script_env()
    assert "RIDES_SASL_PASSWORD" not in env, "the scripts get the password as a file"
    password = broker.password_file.read_text().strip()
    prefix = unique_prefix("secure")
    outbox, state = tmp_path / "outbox", tmp_path / "analysis.db"
    common = {"bootstrap": broker.bootstrap_servers, "prefix": prefix, "env": env, "log_dir": tmp_path}
    with Script("transaction.py", group_id=f"{prefix}transaction", **common) as tx, \
            Script("email.py", "--outbox", str(outbox), group_id=f"{prefix}email", **common) as em, \
            Script("analysis.py", "--state", str(state), "--every", "1", group_id=f"{prefix}analysis",
                   **common) as an, \
            Script("api.py", "--port", "0", "--groups", f"{prefix}transaction,{prefix}email,{prefix}analysis",
                   **common) as api:
        with Script("rides.py", "--count", str(RIDES), "--rate", "100", "--seed", "7", **common) as rides:
            rides.wait(timeout=90)
        produced = parse_summary(rides.log())
        assert produced["acknowledged"] == RIDES and produced["failed"] == 0

        url = api.wait_for_log(r"serving on (http://\S+)", timeout=60).group(1)
        body = {"customer_id": "cust-secure-1", "customer_email": "ada.lovelace@example.com",
                "customer_name": "Ada Lovelace", "pickup": {"lat": 40.758, "lon": -73.9855},
                "dropoff": {"lat": 40.7069, "lon": -74.0113}, "passengers": 1}
        answer = httpx.post(f"{url}/rides", json=body, timeout=30)
        assert answer.status_code == 202, answer.text
        api_ride = answer.json()["ride_id"]

        requested = read_keys(broker, [prefix + "ride_details"])
        assert len(requested) == sum(requested.values()) == RIDES + 1 and api_ride in requested
        decided = read_keys(broker, [prefix + "ride_confirmed", prefix + "ride_rejected"],
                            lambda keys: sum(keys.values()) >= RIDES + 1)
        confirmed = read_keys(broker, [prefix + "ride_confirmed"])
        wait_until(lambda: len(list(outbox.glob("*.eml"))) >= len(confirmed), timeout=60, what="every email written")
        wait_until(lambda: state.exists() and load_state(state)[0].all.rides >= len(confirmed), timeout=60,
                   what="analysis caught up")
        summaries = {}
        for script in (tx, em, an, api):
            script.stop()  # SIGTERM: exit 0 within 10 s, with its summary line
            summaries[script.name] = parse_summary(script.log())

    # Every acknowledged ride (and the one asked for over HTTP) decided exactly once, emailed, analysed.
    assert set(decided) == set(requested) and max(decided.values()) == 1
    assert {p.stem for p in outbox.glob("*.eml")} == set(confirmed)
    assert summaries["email.py"]["emailed"] == len(confirmed)
    assert summaries["analysis.py"]["total"] == load_state(state)[0].all.rides == len(confirmed)
    assert summaries["transaction.py"]["confirmed"] == len(confirmed)
    # (e) The password is in no script's output, whatever they logged.
    assert password not in outputs(tx, em, an, api, rides)


def _one_error_line(script: Script, *needles: str, secrets: tuple[str, ...]) -> str:
    """The script exited non-zero having logged one ERROR line (and no warning, no traceback) holding every
    needle, and none of the secrets anywhere."""
    log = script.log()
    assert script.process.returncode != 0, f"{script.name} exited 0; its log:\n{log}"
    errors = re.findall(r"^.* ERROR +\S+: (.*)$", log, re.MULTILINE)
    assert len(errors) == 1, f"{script.name}: not one ERROR line; its log:\n{log}"
    assert "Traceback" not in log and " WARNING " not in log, log
    for needle in needles:
        assert needle in errors[0], errors[0]
    for secret in secrets:
        assert secret not in log + script.stdout(), f"{script.name} wrote a password"
    return errors[0]


@pytest.mark.parametrize("mistake", ["wrong password", "unknown CA", "plaintext"])
def test_a_mistake_waiting_cannot_mend_stops_the_script_at_once_in_one_line(secure_broker, tmp_path, mistake):
    broker, env = secure_broker, secure_broker.script_env()
    password, wrong = broker.password_file.read_text().strip(), "not-the-password-4711"
    where = broker.bootstrap_servers
    if mistake == "wrong password":
        script, env = "rides.py", {**env, "RIDES_SASL_PASSWORD": wrong}
        del env["RIDES_SASL_PASSWORD_FILE"]
        expected = (f"Kafka at {where} refused the login of user 'rides' (SASL SCRAM-SHA-512): wrong user name or "
                    f"password")
    elif mistake == "unknown CA":  # the system's CAs do not know the throwaway one
        script, env = "rides.py", {k: v for k, v in env.items() if k != "RIDES_SSL_CAFILE"}
        expected = (f"the TLS certificate of Kafka at {where} is not signed by a CA we trust (certificate verify "
                    f"failed: self-signed certificate in certificate chain): pass --ssl-cafile")
    else:  # the scripts' default, PLAINTEXT, against the SASL_SSL port
        script, env = "transaction.py", {}
        expected = f"Kafka at {where} closed the connection at once: does it expect TLS or SASL (--security-protocol)?"
    args = ("--count", "1") if script == "rides.py" else ("--group-id", "mistake")
    started = time.monotonic()
    with Script(script, *args, bootstrap=where, prefix=unique_prefix("mistake"), env=env, log_dir=tmp_path) as it:
        # A broker that is down is waited for (--wait, 60 s); these mistakes are not.
        code = it.wait(timeout=AT_ONCE, expect=None)
    took = time.monotonic() - started
    line = _one_error_line(it, expected, secrets=(password, wrong))
    assert code == 1, it.log()
    print(f"{script} exited {code} after {took:.1f} s: {line}")


def test_the_secrets_are_the_owners_alone_and_the_broker_says_where_they_are(secure_broker):
    broker = secure_broker
    for secret in (broker.password_file, broker.data_dir / "broker.p12", broker.data_dir / "broker.p12.password",
                   broker.data_dir / "server.properties"):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    assert "BEGIN CERTIFICATE" in broker.ca_file.read_text()
    assert Path(broker.script_env()["RIDES_SSL_CAFILE"]) == broker.ca_file
    assert Path(broker.script_env()["RIDES_SASL_PASSWORD_FILE"]) == broker.password_file
    assert broker.client_options()["security_protocol"] == "SASL_SSL"


def test_the_demo_runs_over_sasl_ssl_with_the_scripts_security_variables(secure_broker):
    # tools/demo.py's own clients (its readiness check, its reader of the outcomes) take the RIDES_* security
    # variables the scripts read, so `make demo` works against a secured cluster too; it reconciles before exit 0.
    import os
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIDES_")} | secure_broker.script_env()
    result = subprocess.run([sys.executable, str(root / "tools" / "demo.py"), "--bootstrap-servers",
                             secure_broker.bootstrap_servers, "--rides", "20", "--rate", "20"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=240)
    run_dir = re.search(r"outbox (\S+)/outbox", result.stdout)
    try:
        assert result.returncode == 0, f"demo exited {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr}"
        numbers = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", re.search(
            r"^\[demo\] +summary: (.*)$", result.stdout, re.MULTILINE).group(1))}
        assert numbers["confirmed"] + numbers["rejected"] == 20 + 5
        assert numbers["emailed"] == numbers["analysed"] == numbers["confirmed"] > 0
        assert secure_broker.password_file.read_text().strip() not in result.stdout + result.stderr
    finally:
        if run_dir is not None:
            shutil.rmtree(run_dir.group(1), ignore_errors=True)

