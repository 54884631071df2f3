"""The observability folder as the tests read it: the dashboard's queries, the rule and config files, and a
Prometheus config equivalent to observability/prometheus.yml for scripts listening elsewhere (the live test
starts its scripts on free ports). Pure: it reads files and returns text, and starts nothing.

    dashboard_queries() -> [(panel title, expr)]      every target of every panel, in the dashboard's order
    scrape_config({script: "host:port"}, rule_file) -> str     the text of a config for those targets
    configured_targets(config text) -> {script: "host:port"}   what a config like ours scrapes
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OBSERVABILITY = ROOT / "observability"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus.yml"
PROMETHEUS_DOCKER_CONFIG = OBSERVABILITY / "prometheus.docker.yml"  # the compose profile's copy
ALERTS_FILE = OBSERVABILITY / "alerts.yml"
ALERTS_TEST_FILE = OBSERVABILITY / "alerts.test.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "rides-pipeline.json"

JOB = "rides-pipeline"  # the one scrape job; queries and alerts select on it
# Each script's conventional --metrics-port (observability/README.md), on 127.0.0.1.
PORTS = {"rides.py": 9101, "transaction.py": 9102, "email.py": 9103, "analysis.py": 9104}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel of the dashboard, including those inside a collapsed row (which nests them)."""
    for panel in (board or dashboard())["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every Prometheus target of every panel."""
    return [(panel["title"], target.get("expr", "")) for panel in panels() for target in panel.get("targets", [])]


def scrape_config(targets: Mapping[str, str], rule_file: Path) -> str:
    """observability/prometheus.yml for these targets ({script file name: "host:port"}): the same job, `script`
    labels and label handling, with rule_file (made absolute, so the config can be written anywhere) and every
    second's scrape and evaluation, so that a test sees rates and alerts within seconds."""
    if not targets:
        raise ValueError("scrape_config: no targets")
    q = json.dumps  # a JSON string is a YAML scalar, quoted and escaped
    lines = [
        "# observability/prometheus.yml for scripts on other ports (tests/observability.py scrape_config).",
        "global:",
        "  scrape_interval: 1s",
        "  evaluation_interval: 1s",
        "rule_files:",
        f"  - {q(str(Path(rule_file).resolve()))}",
        "scrape_configs:",
        f"  - job_name: {q(JOB)}",
        "    honor_labels: true",
        "    static_configs:",
    ]
    for script, target in targets.items():
        lines += [f"      - targets: [{q(target)}]", "        labels:", f"          script: {q(script)}"]
    return "\n".join(lines) + "\n"


_TARGET = re.compile(r'^\s*- targets: \["([^"]+)"\]\n\s+labels:\n\s+script: "?([^"\s]+)"?\s*$', re.MULTILINE)


def configured_targets(config: str) -> dict[str, str]:
    """{script: target} of a config written as ours are (one target per static config, with its script label)."""
    return {script: target for target, script in _TARGET.findall(config)}


def job_names(config: str) -> list[str]:
    return [name.strip('"') for name in re.findall(r"^\s*- job_name: (\S+)\s*$", config, re.MULTILINE)]
