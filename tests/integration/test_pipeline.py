"""The whole pipeline, as a user runs it: the four scripts as real processes against a real broker."""

from __future__ import annotations

import json
from collections import Counter
from email import message_from_bytes

from common.stats import load_state
from tests.integration.pipeline import Script, keys, parse_summary, read_all, unique_prefix, wait_until

RIDES = 500


def test_500_rides_each_decided_once_emailed_once_and_counted(kafka_bootstrap, tmp_path):
    prefix = unique_prefix("pipeline")
    outbox, state = tmp_path / "outbox", tmp_path / "analysis.db"
    consumers = {
        "transaction": Script("transaction.py", bootstrap=kafka_bootstrap, prefix=prefix,
                              group_id=f"{prefix}transaction", log_dir=tmp_path),
        "email": Script("email.py", "--outbox", str(outbox), bootstrap=kafka_bootstrap, prefix=prefix,
                        group_id=f"{prefix}email", log_dir=tmp_path),
        "analysis": Script("analysis.py", "--state", str(state), "--every", "1", bootstrap=kafka_bootstrap,
                           prefix=prefix, group_id=f"{prefix}analysis", log_dir=tmp_path),
    }
    try:
        with Script("rides.py", "--count", str(RIDES), "--rate", "250", "--seed", "42", bootstrap=kafka_bootstrap,
                    prefix=prefix, log_dir=tmp_path) as rides:
            rides.wait(timeout=120)
        produced = parse_summary(rides.log())
        assert produced["acknowledged"] == RIDES and produced["failed"] == 0
        requested = keys(read_all(kafka_bootstrap, prefix + "ride_details"))
        assert len(requested) == len(set(requested)) == RIDES

        def decided() -> int:
            return (len(read_all(kafka_bootstrap, prefix + "ride_confirmed", quiet=0.5))
                    + len(read_all(kafka_bootstrap, prefix + "ride_rejected", quiet=0.5)))

        wait_until(lambda: decided() >= RIDES, timeout=120, what=f"{RIDES} rides decided")
        confirmed = Counter(keys(read_all(kafka_bootstrap, prefix + "ride_confirmed")))
        rejected = Counter(keys(read_all(kafka_bootstrap, prefix + "ride_rejected")))
        wait_until(lambda: len(list(outbox.glob("*.eml"))) >= len(confirmed), timeout=60, what="emails written")
        wait_until(lambda: state.exists() and load_state(state)[0].all.rides >= len(confirmed), timeout=60,
                   what="analysis caught up")
        summaries = {}
        for name, script in consumers.items():
            script.stop()  # SIGTERM: exit 0 within 10 s
            summaries[name] = parse_summary(script.log())
    finally:
        for script in consumers.values():
            script.kill()

    # Every acknowledged ride decided exactly once: confirmed or rejected, never both, never twice.
    assert set(confirmed) | set(rejected) == set(requested)
    assert not set(confirmed) & set(rejected)
    assert max((confirmed + rejected).values()) == 1
    assert rejected, "rides.py sends a few requests from outside the service area: some must be rejected"
    # Fan-out: email and analysis, each in its own group, both received every confirmed ride.
    assert {p.stem for p in outbox.glob("*.eml")} == set(confirmed)
    assert summaries["email"]["emailed"] == len(confirmed)
    assert summaries["analysis"]["total"] == load_state(state)[0].all.rides == len(confirmed)
    assert summaries["transaction"]["confirmed"] == len(confirmed)
    assert summaries["transaction"]["rejected"] == len(rejected)
    # Each email is for its rider: the recipient in the .eml is the customer_email of the confirmed ride.
    emails_by_id = {r.key.decode(): json.loads(r.value)["customer_email"]
                    for r in read_all(kafka_bootstrap, prefix + "ride_confirmed")}
    for ride_id in sorted(confirmed)[:20]:
        message = message_from_bytes((outbox / f"{ride_id}.eml").read_bytes())
        assert message["To"] == emails_by_id[ride_id]
