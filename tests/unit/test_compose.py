"""docker-compose.yml must agree with the code: same Kafka as the launcher, same address as the scripts."""

import re
from pathlib import Path

from common.settings import DEFAULT_BOOTSTRAP_SERVERS
from tools.broker import KAFKA_VERSION

COMPOSE = (Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text()


def _setting(name: str) -> str:
    # A tiny reader for `name: value` lines (pyyaml is not a dependency); the value may be quoted.
    m = re.search(rf"^\s*{re.escape(name)}:\s*\"?([^\"#\n]+?)\"?\s*(?:#.*)?$", COMPOSE, re.MULTILINE)
    assert m, f"docker-compose.yml has no {name}"
    return m.group(1).strip()


def test_image_is_apache_kafka_of_the_launchers_version():
    assert _setting("image") == f"apache/kafka:{KAFKA_VERSION}"


def test_advertised_listener_is_the_scripts_default_bootstrap_servers():
    listeners = _setting("KAFKA_ADVERTISED_LISTENERS").split(",")
    plaintext = [lst.split("://", 1)[1] for lst in listeners if lst.startswith("PLAINTEXT://")]
    assert plaintext == [DEFAULT_BOOTSTRAP_SERVERS]


def test_the_advertised_port_is_published_on_the_host():
    port = DEFAULT_BOOTSTRAP_SERVERS.rsplit(":", 1)[1]
    assert re.search(rf"^\s*-\s*\"?127\.0\.0\.1:{port}:{port}\"?\s*$", COMPOSE, re.MULTILINE)


def test_kraft_single_node_with_a_named_volume_and_a_healthcheck():
    assert _setting("KAFKA_PROCESS_ROLES") == "broker,controller"
    assert re.search(r"^volumes:\n\s+kafka-data:", COMPOSE, re.MULTILINE)
    assert re.search(r"^\s+- kafka-data:/var/lib/kafka/data\s*$", COMPOSE, re.MULTILINE)
    assert _setting("KAFKA_LOG_DIRS") == "/var/lib/kafka/data"
    assert "healthcheck:" in COMPOSE


def test_kafka_is_published_on_the_loopback_interface_only():
    # PLAINTEXT without authentication: anyone who can reach the port can read and write every topic.
    port = DEFAULT_BOOTSTRAP_SERVERS.rsplit(":", 1)[1]
    published = re.findall(r"^\s*-\s*\"?([0-9.:\[\]]+)\"?\s*$", COMPOSE, re.MULTILINE)
    assert published == [f"127.0.0.1:{port}:{port}"]
