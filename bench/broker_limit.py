"""The broker's own limit for bench/pipeline.py: Java's ProducerPerformance (org.apache.kafka:kafka-tools, the
broker's version) sending records of the rides' size with the settings of common.clients.producer. What
kafka-python reaches is then read against what the broker takes from a client that is not the bottleneck.

The jars are resolved once with Maven (bench/kafka-tools.pom.xml) into the git-ignored .cache/, as the
broker's are (tools/broker.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tools.broker import CACHE_DIR, KAFKA_VERSION, check_java

POM = Path(__file__).resolve().with_name("kafka-tools.pom.xml")
LIBS = CACHE_DIR.parent / f"kafka-tools-{KAFKA_VERSION}" / "libs"
DONE = LIBS.parent / ".resolved"  # written once the jars were copied completely
# The Java producer's summary line: "100000 records sent, 176991.2 records/sec (66.38 MB/sec), ...".
SUMMARY = re.compile(r"^\d+ records sent, ([\d.]+) records/sec", re.MULTILINE)


class LimitError(Exception):
    """The limit could not be measured (no Maven, offline, Java failed): one line."""


def resolve() -> Path:
    """The folder of kafka-tools' jars, resolved with Maven on first use."""
    if DONE.exists():
        return LIBS
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LimitError("no Maven (mvn) to resolve org.apache.kafka:kafka-tools")
    out = subprocess.run([mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(POM), f"-Dkafka.version={KAFKA_VERSION}",
                          "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={LIBS}"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        lines = [line for line in out.stdout.splitlines() if "ERROR" in line] or ["mvn failed"]
        raise LimitError(f"Maven could not resolve kafka-tools {KAFKA_VERSION} (offline?): {lines[0][:200]}")
    DONE.touch()
    return LIBS


def parse_rate(output: str) -> float:
    """The records/s of ProducerPerformance's last summary line (it prints one per 5 s window, then the total)."""
    rates = SUMMARY.findall(output)
    if not rates:
        raise LimitError("ProducerPerformance printed no summary line")
    return float(rates[-1])


def producer_performance(bootstrap: str, topic: str, records: int, record_size: int) -> float:
    """Records/s of ProducerPerformance sending `records` records of `record_size` bytes as fast as it can."""
    java = check_java()
    props = [
        f"bootstrap.servers={bootstrap}",
        # common.clients.producer's settings: the comparison is of clients, not of settings.
        "acks=all", "enable.idempotence=true", "linger.ms=10",
    ]
    out = subprocess.run([java, "-cp", f"{resolve()}/*", "org.apache.kafka.tools.ProducerPerformance",
                          "--topic", topic, "--num-records", str(records), "--record-size", str(record_size),
                          "--throughput", "-1", "--command-property", *props],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        lines = [line for line in (out.stderr + out.stdout).splitlines() if line.strip()] or ["(no output)"]
        raise LimitError(f"ProducerPerformance exited {out.returncode}: {lines[-1][:200]}")
    return parse_rate(out.stdout)
