"""The observability folder against a real Prometheus (Debian's `prometheus`, which .ci/run installs) scraping the
real pipeline on loopback: every dashboard panel's query returns data, every rule evaluates without error and
every recording rule returns data, the dead-letter alert fires on a poison record, and a consumer killed is seen
down (RidesScriptDown pending)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.integration.pipeline import Script, consumers, metrics_url, produce_raw, unique_prefix, wait_until
from tests.observability import ALERTS_FILE, dashboard_queries, scrape_config

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A Prometheus server on 127.0.0.1 with this config, in a folder of its own; stopped by its pid."""

    def __init__(self, config: Path, data: Path, log: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={data}",
                 f"--web.listen-address={self.url.removeprefix('http://')}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            return json.loads(response.read())

    def ready(self) -> bool:
        assert self.process.poll() is None, f"prometheus exited: {self.log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def prometheus_binary():
    if not os.path.exists(PROMETHEUS):
        message = f"{PROMETHEUS} not found: install Debian's prometheus package (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return PROMETHEUS


def test_every_panel_and_rule_returns_data_against_the_running_pipeline(prometheus_binary, kafka_bootstrap,
                                                                        tmp_path):
    prefix = unique_prefix("prom")
    flags = ("--metrics-port", "0")
    with consumers(kafka_bootstrap, prefix, tmp_path, *flags) as (tx, em, an):
        tx.wait_for_log(r"partitions assigned: \S*ride_details\[")
        with Script("rides.py", *flags, "--rate", "40", bootstrap=kafka_bootstrap, prefix=prefix) as rides:
            targets = {s.name: metrics_url(s).removeprefix("http://") for s in (rides, tx, em, an)}
            config = tmp_path / "prometheus.yml"
            config.write_text(scrape_config(targets, ALERTS_FILE.resolve()))
            prom = Prometheus(config, tmp_path / "prometheus-data", tmp_path / "prometheus.log")
            try:
                wait_until(prom.ready, timeout=60, what="prometheus ready")
                wait_until(lambda: len([t for t in prom.get("/api/v1/targets")["data"]["activeTargets"]
                                        if t["health"] == "up"]) == 4, timeout=60, what="all four scripts scraped")
                produce_raw(kafka_bootstrap, prefix + "ride_details", [(b"poison", b"{not json")])

                # Each panel: data once a few scrapes are in (rate() over [1m] needs two samples).
                pending = dict(enumerate(dashboard_queries()))
                deadline = time.monotonic() + 90
                while pending and time.monotonic() < deadline:
                    pending = {i: (title, expr) for i, (title, expr) in pending.items() if not prom.query(expr)}
                    if pending:
                        time.sleep(2)
                assert not pending, f"panels whose query returned no data: {sorted(pending.values())}"

                # Every rule evaluated without error; every recording rule has data; the poison record's alert fires.
                def rules() -> list[dict]:
                    return [r for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]

                wait_until(lambda: all(r.get("lastEvaluation", "").startswith("2") and
                                       not r["lastEvaluation"].startswith("0001") for r in rules()),
                           timeout=60, what="every rule evaluated once")
                broken = [(r["name"], r.get("lastError")) for r in rules() if r["health"] != "ok"]
                assert not broken, broken
                recorded = [r["name"] for r in rules() if r["type"] == "recording"]
                assert recorded, "no recording rules"
                wait_until(lambda: all(prom.query(name) for name in recorded), timeout=60,
                           what=f"every recording rule returns data ({recorded})")
                alert_names = {r["name"] for r in rules() if r["type"] == "alerting"}
                assert {"RidesConsumerLagHigh", "RidesDeadLetters", "RidesScriptDown",
                        "RidesTransactionsAborting"} <= alert_names

                def alert_state(name: str, script: str) -> str | None:
                    for a in prom.get("/api/v1/alerts")["data"]["alerts"]:
                        if a["labels"].get("alertname") == name and a["labels"].get("script") == script:
                            return a["state"]
                    return None

                wait_until(lambda: alert_state("RidesDeadLetters", "transaction.py") in ("pending", "firing"),
                           timeout=60, what="RidesDeadLetters active after a poison record")
                em.kill()  # a consumer down: Prometheus sees its target fail
                wait_until(lambda: alert_state("RidesScriptDown", "email.py") in ("pending", "firing"), timeout=60,
                           what="RidesScriptDown pending once email.py is killed")
                assert alert_state("RidesScriptDown", "transaction.py") is None
            finally:
                prom.stop()
            rides.stop()
        tx.stop()
        an.stop()
