"""docker-compose.yml must agree with the code: same Kafka as the launcher, same address as the scripts; and it
must publish nothing beyond the loopback interface, with Prometheus and Grafana only behind their profile."""

import re
from pathlib import Path

from common.settings import DEFAULT_BOOTSTRAP_SERVERS
from tools.broker import KAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = (ROOT / "docker-compose.yml").read_text()


def _services() -> dict[str, str]:
    # A tiny reader (pyyaml is not a dependency): each service's lines, by name, from `services:` to the next
    # top-level key. Service names sit at two spaces of indentation, their settings deeper.
    services: dict[str, list[str]] = {}
    current: list[str] | None = None
    body = COMPOSE.split("\nservices:\n", 1)[1]
    for line in body.splitlines():
        if re.match(r"^\S", line):
            break  # the next top-level key (volumes:)
        if m := re.match(r"^  ([\w-]+):\s*$", line):
            current = services.setdefault(m.group(1), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) + "\n" for name, lines in services.items()}


SERVICES = _services()


def _setting(name: str, service: str = "kafka") -> str:
    # `name: value` in that service's block; the value may be quoted.
    m = re.search(rf"^\s*{re.escape(name)}:\s*\"?([^\"#\n]+?)\"?\s*(?:#.*)?$", SERVICES[service], re.MULTILINE)
    assert m, f"docker-compose.yml's {service} has no {name}"
    return m.group(1).strip()


def _list(name: str, service: str) -> list[str]:
    # The items of a `name:` list in that service's block (comments skipped), unquoted; [] without one.
    m = re.search(rf"^(\s*){re.escape(name)}:\s*\n((?:\1\s+(?:-.*|#.*)\n)*)", SERVICES[service], re.MULTILINE)
    if not m:
        return []
    items = re.findall(r"^\s*-\s*(.+?)\s*$", m.group(2), re.MULTILINE)
    return [item.strip('"') for item in items]


def test_image_is_apache_kafka_of_the_launchers_version():
    assert _setting("image") == f"apache/kafka:{KAFKA_VERSION}"


def test_advertised_listener_is_the_scripts_default_bootstrap_servers():
    listeners = _setting("KAFKA_ADVERTISED_LISTENERS").split(",")
    plaintext = [lst.split("://", 1)[1] for lst in listeners if lst.startswith("PLAINTEXT://")]
    assert plaintext == [DEFAULT_BOOTSTRAP_SERVERS]


def test_the_advertised_port_is_published_on_the_host():
    port = DEFAULT_BOOTSTRAP_SERVERS.rsplit(":", 1)[1]
    assert re.search(rf"^\s*-\s*\"?127\.0\.0\.1:{port}:{port}\"?\s*$", SERVICES["kafka"], re.MULTILINE)


def test_kraft_single_node_with_a_named_volume_and_a_healthcheck():
    assert _setting("KAFKA_PROCESS_ROLES") == "broker,controller"
    assert re.search(r"^volumes:\n\s+kafka-data:", COMPOSE, re.MULTILINE)
    assert re.search(r"^\s+- kafka-data:/var/lib/kafka/data\s*$", SERVICES["kafka"], re.MULTILINE)
    assert _setting("KAFKA_LOG_DIRS") == "/var/lib/kafka/data"
    assert "healthcheck:" in SERVICES["kafka"]


def test_every_published_port_is_on_the_loopback_interface_only():
    # Kafka's PLAINTEXT listener has no authentication (anyone who can reach it reads and writes every topic);
    # neither have Prometheus' API nor Grafana's anonymous viewer.
    port = DEFAULT_BOOTSTRAP_SERVERS.rsplit(":", 1)[1]
    published = {name: _list("ports", name) for name in SERVICES}
    assert published["kafka"] == [f"127.0.0.1:{port}:{port}"]
    assert published["prometheus"] == ["127.0.0.1:9090:9090"]
    assert published["grafana"] == ["127.0.0.1:3000:3000"]
    for name, ports in published.items():
        for item in ports:  # the short syntax only, so that nothing here is read past
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", item), f"{name} publishes {item}"
    assert COMPOSE.count("ports:") == sum(1 for ports in published.values() if ports)


def test_plain_up_starts_only_kafka_and_the_observability_profile_adds_prometheus_and_grafana():
    # A service with a profile starts only when its profile is asked for; one without always does.
    profiles = {name: re.findall(r"^    profiles: (.+)$", block, re.MULTILINE) for name, block in SERVICES.items()}
    cluster = {f"kafka-{i}": ['["cluster"]'] for i in (1, 2, 3)}  # the profile `cluster`: test_broker_cli.py
    assert profiles == {"kafka": [], "prometheus": ['["observability"]'], "grafana": ['["observability"]'], **cluster}


def test_observability_images_are_pinned_to_a_release():
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", _setting("image", "prometheus"))
    assert re.fullmatch(r"grafana/grafana-oss:\d+\.\d+\.\d+", _setting("image", "grafana"))


def test_prometheus_runs_the_compose_copy_of_the_config_and_reaches_the_host():
    mounts = _list("volumes", "prometheus")
    assert "./observability:/etc/prometheus/rides:ro" in mounts
    assert "--config.file=/etc/prometheus/rides/prometheus.docker.yml" in _list("command", "prometheus")
    assert (ROOT / "observability" / "prometheus.docker.yml").is_file()
    assert _list("extra_hosts", "prometheus") == ["host.docker.internal:host-gateway"]


def test_grafana_is_provisioned_from_the_observability_folder_with_anonymous_viewers():
    mounts = dict(m.rsplit(":", 1)[0].split(":", 1) for m in _list("volumes", "grafana"))
    for source in mounts:
        assert (ROOT / source).is_dir(), source
    assert mounts["./observability/grafana/dashboards"] == "/etc/grafana/dashboards"  # provisioning's path
    assert mounts["./observability/grafana/provisioning/datasources"] == "/etc/grafana/provisioning/datasources"
    assert mounts["./observability/grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    assert _setting("GF_AUTH_ANONYMOUS_ENABLED", "grafana") == "true"
    assert _setting("GF_AUTH_ANONYMOUS_ORG_ROLE", "grafana") == "Viewer"
    # From the environment; the default is for local use only (the port is on the loopback).
    assert re.fullmatch(r"\$\{GF_SECURITY_ADMIN_PASSWORD:-[^}]+\}", _setting("GF_SECURITY_ADMIN_PASSWORD", "grafana"))
