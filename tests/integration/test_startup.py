"""Every script started while the broker restarts comes up and works: each Kafka call of its start-up
(client, topics, transactions, group join) is retried until the broker is back, none kills the script.

The moments are random (seeded, printed): the broker stops a little after the scripts start, while they
are creating their clients and topics, or the scripts start while it is down.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter

import pytest

from tests.integration.pipeline import Script, keys, parse_summary, read_all, unique_prefix, wait_until
from tools.broker import free_port

pytestmark = pytest.mark.chaos  # the broker stops while the scripts start: `make chaos`, not `make test`

RIDES = 20
SEED = random.SystemRandom().randrange(2**16)
_rng = random.Random(SEED)
# (seconds after the scripts start when the broker stops, or None: it is down before they start;
#  seconds it stays down)
# Start-up (imports, clients, topics) takes about 1 to 3 s here: stops spread over that window.
MOMENTS = [(round(at + _rng.uniform(-0.3, 0.3), 1), round(_rng.uniform(0, 2), 1)) for at in (0.8, 1.5, 2.2)] + \
          [(None, round(_rng.uniform(1, 4), 1))]


@pytest.mark.parametrize("stop_after, down_for", MOMENTS, ids=[f"stop{a}-down{d}" for a, d in MOMENTS])
def test_scripts_started_while_the_broker_restarts_come_up_and_work(own_broker, tmp_path, stop_after, down_for):
    print(f"seed {SEED}: broker stops {stop_after} s after the scripts start, down for {down_for} s")
    port = free_port()
    bootstrap = own_broker.start(port=port)
    prefix = unique_prefix("startup")
    common = {"bootstrap": bootstrap, "prefix": prefix, "log_dir": tmp_path}
    if stop_after is None:
        own_broker.stop()
    scripts = [
        Script("transaction.py", "--wait", "120", **common),
        Script("email.py", "--wait", "120", "--outbox", str(tmp_path / "outbox"), **common),
        Script("analysis.py", "--wait", "120", "--state", str(tmp_path / "analysis.db"), **common),
        Script("rides.py", "--wait", "120", "--count", str(RIDES), "--seed", "11", **common),
    ]
    tx, email, analysis, rides = scripts
    try:
        if stop_after is not None:
            time.sleep(stop_after)  # the moment is the scenario: random, not a condition to wait for
            own_broker.stop()
        time.sleep(down_for)
        own_broker.start(port=port)

        rides.wait(timeout=120)
        wait_until(lambda: len(list((tmp_path / "outbox").glob("*.eml")))
                   + len(read_all(bootstrap, prefix + "ride_rejected", quiet=0.5)) >= RIDES,
                   timeout=120, what="every ride emailed or rejected")
        confirmed = len(read_all(bootstrap, prefix + "ride_confirmed", quiet=0.5))
        wait_until(lambda: re.search(rf"confirmed rides: {confirmed}\b", analysis.stdout()), timeout=60,
                   what=f"analysis.py counting {confirmed} rides")
        for script in (tx, email, analysis):
            script.stop()
    finally:
        for script in scripts:
            script.kill()

    for script in scripts:
        log = script.log()
        assert "unexpected error" not in log and "Traceback" not in log, f"{script.name}:\n{log}"
    assert parse_summary(rides.log())["acknowledged"] == RIDES
    decided = Counter(keys(read_all(bootstrap, prefix + "ride_confirmed"))
                      + keys(read_all(bootstrap, prefix + "ride_rejected")))
    assert len(decided) == RIDES and max(decided.values()) == 1
