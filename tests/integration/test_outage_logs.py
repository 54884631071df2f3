"""A broker lost in mid-stream is said once, and its return once, by every script (common.reachability)."""

from __future__ import annotations

import re

import pytest

from tests.integration.pipeline import Script, unique_prefix

pytestmark = pytest.mark.chaos  # the broker restarts under the scripts: `make chaos`, not `make test`

UNREACHABLE = r"WARNING .*Kafka is unreachable at \S+ \(since [\d:]+\); waiting for it"
BACK = r"INFO .*Kafka is back at \S+ after \d+ s"


def test_each_script_says_once_that_kafka_is_gone_and_once_that_it_is_back(kafka_bootstrap, restart_broker, tmp_path):
    prefix = unique_prefix("lost")
    with Script("rides.py", "--rate", "20", bootstrap=kafka_bootstrap, prefix=prefix, log_dir=tmp_path) as rides, \
         Script("email.py", "--outbox", str(tmp_path / "outbox"), bootstrap=kafka_bootstrap,
                prefix=unique_prefix("lost-email"), log_dir=tmp_path) as email:
        rides.wait_for_log(r"progress: requested=\d+ acknowledged=[1-9]")
        email.wait_for_log(r"partitions assigned: \S+ride_confirmed\[")

        restart_broker()  # same address, same data; other tests' topics survive it

        for script in (rides, email):
            script.wait_for_log(BACK, timeout=60)
        acked = len(re.findall("progress:", rides.log()))
        rides.wait_for_log(rf"(?s)(progress:.*){{{acked}}}progress: requested=\d+ acknowledged=[1-9]", timeout=30)
        rides.stop()
        email.stop()

    for script in (rides, email):
        log = script.log()
        assert len(re.findall(UNREACHABLE, log)) == 1, f"{script.name}:\n{log}"
        assert len(re.findall(BACK, log)) == 1, f"{script.name}:\n{log}"
        assert re.search(UNREACHABLE, log).start() < re.search(BACK, log).start(), f"{script.name}:\n{log}"
        assert "Traceback" not in log, f"{script.name}:\n{log}"
