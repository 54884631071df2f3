"""observability/ is checked as Prometheus itself would: promtool validates the configs and rules and runs the
alerts' unit tests, and the dashboard's queries and the recording rules are evaluated on synthetic series of a
pipeline without SMTP.
The rest are pure checks: the dashboard's structure, and that every metric a query names is one common.metrics
serves. Without promtool (Debian's `prometheus` package), its tests skip, or fail where CI is set."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from common import metrics
from tests.observability import (
    ALERTS_FILE,
    ALERTS_TEST_FILE,
    DASHBOARD,
    JOB,
    PORTS,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DOCKER_CONFIG,
    configured_targets,
    dashboard,
    dashboard_queries,
    job_names,
    panels,
    scrape_config,
)

REQUIRED_ALERTS = {"RidesConsumerLagHigh", "RidesDeadLetters", "RidesScriptDown", "RidesTransactionsAborting"}
# Counters whose series may legitimately be missing from a running pipeline: only these queries may fall back
# to `or vector(0)`, which would otherwise hide a query that has stopped matching anything.
MAY_BE_ABSENT = ("rides_smtp_deliveries_total", "rides_transactions_total", "rides_dead_letters_total",
                 "rides_kafka_reconnects_total", "rides:transactions:", "rides:dead_letters:",
                 "rides:kafka_reconnects:")


# ------------------------------------------------------------------------------------------------ promtool


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool not found: install Debian's prometheus package (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI installs it (.ci/run): missing there is a broken setup, not a skip
        pytest.skip(reason)
    return path


def run(promtool: str, *args: str | Path) -> str:
    result = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{output}"
    return output


def test_prometheus_config_is_valid_and_its_rule_file_loads(promtool):
    assert "1 rule files found" in run(promtool, "check", "config", PROMETHEUS_CONFIG)


def test_the_compose_profiles_prometheus_config_is_valid_and_its_rule_file_loads(promtool):
    assert "1 rule files found" in run(promtool, "check", "config", PROMETHEUS_DOCKER_CONFIG)


def test_alerting_and_recording_rules_are_valid(promtool):
    run(promtool, "check", "rules", ALERTS_FILE)


def test_every_alert_fires_when_it_should_and_stays_silent_when_it_should_not(promtool):
    assert "SUCCESS" in run(promtool, "test", "rules", ALERTS_TEST_FILE)


def test_scrape_config_is_a_valid_config_for_the_given_targets_and_loads_the_rules(promtool, tmp_path):
    targets = {"transaction.py": "127.0.0.1:40102", "email.py": "127.0.0.1:40103"}
    config = tmp_path / "elsewhere" / "prometheus.yml"
    config.parent.mkdir()
    config.write_text(scrape_config(targets, ALERTS_FILE))
    assert "1 rule files found" in run(promtool, "check", "config", config)  # an absolute path: found from anywhere
    text = config.read_text()
    assert configured_targets(text) == targets
    assert job_names(text) == [JOB] == job_names(PROMETHEUS_CONFIG.read_text())
    assert re.search(r"^  scrape_interval: 1s$", text, re.MULTILINE)
    assert re.search(r"^  evaluation_interval: 1s$", text, re.MULTILINE)
    assert f'"{ALERTS_FILE.resolve()}"' in text


def test_scrape_config_labels_targets_as_prometheus_yml_does():
    ours = PROMETHEUS_CONFIG.read_text()
    generated = scrape_config({script: f"127.0.0.1:{port}" for script, port in PORTS.items()}, ALERTS_FILE)
    assert configured_targets(generated) == configured_targets(ours)
    assert ("honor_labels: true" in generated) == ("honor_labels: true" in ours)


def test_scrape_config_refuses_to_scrape_nothing():
    with pytest.raises(ValueError, match="no targets"):
        scrape_config({}, ALERTS_FILE)


# ------------------------------------------------------------------------------- the configs, as text


def _without_comments(text: str) -> list[str]:
    return [line.split(" #", 1)[0].rstrip() for line in text.splitlines() if line.strip() and
            not line.lstrip().startswith("#")]


def test_prometheus_yml_scrapes_each_script_on_its_conventional_loopback_port_with_its_script_label():
    config = PROMETHEUS_CONFIG.read_text()
    assert configured_targets(config) == {script: f"127.0.0.1:{port}" for script, port in PORTS.items()}
    assert job_names(config) == [JOB]
    assert re.search(r"^  scrape_interval: 5s\b", config, re.MULTILINE)
    assert re.search(r"^  - alerts.yml\b", config, re.MULTILINE)  # relative: next to the config
    assert "--web.listen-address=127.0.0.1:9090" in config  # the comment that says how to run it


def test_the_compose_copy_is_prometheus_yml_with_the_host_as_a_container_reaches_it():
    ours, docker = PROMETHEUS_CONFIG.read_text(), PROMETHEUS_DOCKER_CONFIG.read_text()
    assert configured_targets(docker) == {script: f"host.docker.internal:{port}" for script, port in PORTS.items()}
    expected = [line.replace('"127.0.0.1:', '"host.docker.internal:') for line in _without_comments(ours)]
    assert _without_comments(docker) == expected


def _alert_blocks() -> dict[str, str]:
    """Each alert rule's text in alerts.yml, by alert name."""
    text = ALERTS_FILE.read_text()
    alerts = text.split("  - name: rides-alerts\n", 1)[1]
    return {m.group(1): m.group(0) for m in re.finditer(r"^      - alert: (\w+)\n(?:(?!      - ).*\n?)*", alerts,
                                                        re.MULTILINE)}


def test_the_rule_groups_and_the_required_alerts_are_there_each_with_a_severity_and_templated_annotations():
    text = ALERTS_FILE.read_text()
    assert re.findall(r"^  - name: (\S+)$", text, re.MULTILINE) == ["rides-recording", "rides-alerts"]
    blocks = _alert_blocks()
    assert REQUIRED_ALERTS <= set(blocks)
    for name, block in blocks.items():
        assert re.search(r"^          severity: (warning|critical)$", block, re.MULTILINE), name
        assert re.search(r"^          summary: .*\{\{ \$labels\.\w+ \}\}", block, re.MULTILINE), name
        assert re.search(r"^          description: ", block, re.MULTILINE), name
    assert "severity: critical" in blocks["RidesScriptDown"]


def test_each_alert_compares_a_recorded_series_or_a_plain_query_with_its_threshold():
    records = set(re.findall(r"^      - record: (\S+)$", ALERTS_FILE.read_text(), re.MULTILINE))
    for name, block in _alert_blocks().items():
        expr = re.search(r"^        expr: (.+)$", block, re.MULTILINE)
        assert expr, f"{name}: a one-line expr"
        m = re.fullmatch(r"(rides:[\w:]+|[a-z_]+(?:\{[^}]*\})?) (>|==) (\d+)", expr.group(1))
        assert m, f"{name}: {expr.group(1)}"
        assert not m.group(1).startswith("rides:") or m.group(1) in records, name
    assert "rides:consumer_lag_seconds:max > 60" in _alert_blocks()["RidesConsumerLagHigh"]


def test_each_alert_is_tested_both_firing_and_silent():
    tests = ALERTS_TEST_FILE.read_text()
    cases = re.findall(r"^        alertname: (\w+)\n        exp_alerts:( \[\])?", tests, re.MULTILINE)
    for name in _alert_blocks():
        assert (name, "") in cases, f"{name}: no case where it fires"
        assert (name, " []") in cases, f"{name}: no case where it stays silent"


# ------------------------------------------------------------------------------------------ the dashboard


def test_the_dashboard_is_the_ride_pipeline_on_the_provisioned_data_source():
    board = dashboard()
    assert (board["uid"], board["title"]) == ("rides-pipeline", "Ride pipeline")
    assert 36 <= board["schemaVersion"] <= 41
    assert board["templating"]["list"] == []  # no variables: every query stands on its own


def test_every_panel_has_a_query_on_the_prometheus_data_source():
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        targets = panel.get("targets", [])
        assert any(t.get("expr", "").strip() for t in targets), panel["title"]
        for target in targets:
            assert target.get("datasource", panel["datasource"])["uid"] == "prometheus", panel["title"]
            assert target["refId"], panel["title"]


def test_panel_ids_are_unique_and_titles_too():
    all_panels = list(panels())
    assert len({p["id"] for p in all_panels}) == len(all_panels)
    assert len({p["title"] for p in all_panels}) == len(all_panels)


def test_no_query_uses_a_grafana_variable_so_prometheus_can_evaluate_each_as_it_is():
    for title, expr in dashboard_queries():
        assert "$" not in expr, f"{title}: {expr}"  # $__rate_interval, $__interval, $group, ...


def _exprs_of_the_rules() -> list[str]:
    text = ALERTS_FILE.read_text()
    return [m.group(1) or m.group(2) for m in re.finditer(r"^ +expr: (?:\|\n((?:^ {10}.*\n)+)|(.+)$)", text,
                                                         re.MULTILINE)]


def test_no_query_or_rule_names_a_consumer_group():
    # --group-id sets them (the tests prefix theirs): a query pinned to "email" would show nothing there.
    for where, expr in [*dashboard_queries(), *(("alerts.yml", e) for e in _exprs_of_the_rules())]:
        assert not re.search(r"\bgroup\s*(=|!=|=~|!~)\s*\"", expr), f"{where}: {expr}"


def test_only_the_counters_that_may_be_absent_fall_back_to_zero():
    for title, expr in dashboard_queries():
        if "vector(0)" in expr:
            assert any(name in expr for name in MAY_BE_ABSENT), f"{title}: {expr}"


def _served_names() -> set[str]:
    """Every series name a script's /metrics can show, as Prometheus stores it, from a Watch of its own."""
    registry = CollectorRegistry()
    watch = metrics.Watch("test.py", "group", unreachable_after=60.0, registry=registry)
    watch.count({}, {"key": "outcome"})
    watch.transactions(dict, committed="batches", aborted="aborted")
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", ""),
                "info": ("_info",)}
    return {family.name + suffix for family in registry.collect()
            for suffix in suffixes.get(family.type, ("",))}


def _names_in(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)  # label values such as script="rides.py" are not names
    return set(re.findall(r"\b(?:rides|process|python)[_:][\w:]*", without_strings))


def test_every_metric_a_query_or_rule_names_is_served_by_common_metrics_or_recorded_by_the_rules():
    served = _served_names()
    assert {"rides_processed_total", "rides_consumer_lag_seconds", "rides_end_to_end_seconds_bucket",
            "rides_dead_letters_total", "process_resident_memory_bytes"} <= served  # the reading itself works
    records = set(re.findall(r"^      - record: (\S+)$", ALERTS_FILE.read_text(), re.MULTILINE))
    for where, expr in [*dashboard_queries(), *(("alerts.yml", e) for e in _exprs_of_the_rules())]:
        for name in _names_in(expr):
            assert name in (records if ":" in name else served), f"{where}: {name} in {expr}"


def test_every_recording_rule_is_used_by_an_alert_or_the_dashboard():
    text = ALERTS_FILE.read_text()
    records = re.findall(r"^      - record: (\S+)$", text, re.MULTILINE)
    used = set().union(*(_names_in(e) for _, e in dashboard_queries()), *(_names_in(e) for e in _exprs_of_the_rules()))
    assert [r for r in records if r not in used] == []


# A pipeline running without SMTP, in exactly-once mode, with no outage (and no dead letter unless asked), as
# Prometheus would hold it after scraping each script on its conventional port every 15 s for 10 minutes.
OUTCOMES = {"rides.py": ("requested", "acknowledged", "failed"),
            "transaction.py": ("confirmed", "rejected", "duplicate", "dead_lettered"),
            "email.py": ("emailed", "resent", "duplicate", "dead_lettered"),
            "analysis.py": ("analysed", "dead_lettered")}
CONSUMERS = {"transaction.py": ("transaction", "ride_details", "confirmed"),
             "email.py": ("email", "ride_confirmed", "emailed"),
             "analysis.py": ("analysis", "ride_confirmed", "analysed")}
STEPS = 40


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def _histogram(name: str, buckets: tuple[float, ...], fast_below: float, **labels: str) -> list[dict[str, str]]:
    # 10 observations per step, all of them no slower than fast_below.
    series = [_series(f"{name}_bucket", f"0+{10 if le >= fast_below else 0}x{STEPS}", le=repr(le), **labels)
              for le in buckets]
    return series + [_series(f"{name}_bucket", f"0+10x{STEPS}", le="+Inf", **labels),
                     _series(f"{name}_count", f"0+10x{STEPS}", **labels),
                     _series(f"{name}_sum", f"0+1x{STEPS}", **labels)]


def _pipeline_without_smtp(dead_letter: bool = False) -> list[dict[str, str]]:
    """The pipeline's series; dead_letter: transaction.py set one invalid request aside at minute 4."""
    series = []
    for script, port in PORTS.items():
        target = {"job": JOB, "instance": f"127.0.0.1:{port}", "script": script}
        series += [_series("up", f"1x{STEPS}", **target),
                   _series("rides_kafka_reachable", f"1x{STEPS}", **target),
                   _series("rides_kafka_reconnects_total", f"0x{STEPS}", **target),
                   _series("process_resident_memory_bytes", f"60000000x{STEPS}", **target),
                   _series("process_cpu_seconds_total", f"0+3x{STEPS}", **target)]
        series += [_series("rides_processed_total", f"0+{5 if i == 0 else 0}x{STEPS}", outcome=outcome, **target)
                   for i, outcome in enumerate(OUTCOMES[script])]
        series += _histogram("rides_batch_duration_seconds", metrics.BATCH_BUCKETS, 0.01, **target)
        if script in CONSUMERS:
            group, topic, stage = CONSUMERS[script]
            series += [_series("rides_consumer_lag_records", f"0x{STEPS}", group=group, topic=topic,
                               partition=str(p), **target) for p in range(6)]
            series.append(_series("rides_consumer_lag_seconds", f"0x{STEPS}", group=group, **target))
            series += _histogram("rides_end_to_end_seconds", metrics.END_TO_END_BUCKETS, 0.1, stage=stage,
                                 **target)
        if script == "transaction.py":  # exactly-once: both outcomes from the start
            series += [_series("rides_transactions_total", f"0+1x{STEPS}", outcome="committed", **target),
                       _series("rides_transactions_total", f"0x{STEPS}", outcome="aborted", **target)]
            if dead_letter:  # the series appears with the letter, at 1
                series.append(_series("rides_dead_letters_total", f"_x16 1x{STEPS - 16}", topic="ride_details.dlq",
                                      reason="invalid", **target))
    return series


def _none_is_empty(promtool: str, tmp_path: Path, queries: list[tuple[str, str]], series: list[dict[str, str]],
                   empty: str) -> None:
    """Each query becomes an alert that fires when it returns nothing (absent()) at minute 5; none may fire.
    `empty`, a query that returns nothing from these series, must: it proves that an empty answer is seen."""
    checks = [{"alert": "QueryReturnsNothing", "expr": f"absent({expr})", "labels": {"where": where, "query": expr}}
              for where, expr in queries]
    checks.append({"alert": "ControlReturnsNothing", "expr": f"absent({empty})"})
    rules = tmp_path / "queries.rules.yml"  # JSON is YAML: no YAML writer needed
    rules.write_text(json.dumps({"groups": [{"name": "queries", "rules": checks}]}, indent=1))
    test = tmp_path / "queries.test.yml"
    test.write_text(json.dumps({
        "rule_files": [str(ALERTS_FILE), str(rules)],
        "evaluation_interval": "15s",
        "group_eval_order": ["rides-recording", "queries"],
        "tests": [{
            "interval": "15s",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "QueryReturnsNothing", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "ControlReturnsNothing", "exp_alerts": [{"exp_labels": {}}]},
            ],
        }],
    }, indent=1))
    run(promtool, "test", "rules", test)


def test_every_dashboard_query_returns_data_from_a_pipeline_without_smtp(promtool, tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 13
    _none_is_empty(promtool, tmp_path, queries, _pipeline_without_smtp(),
                   empty="sum by (result) (rate(rides_smtp_deliveries_total[1m]))")


def test_every_recording_rule_returns_data_from_a_pipeline_without_smtp_once_a_record_is_set_aside(promtool,
                                                                                                  tmp_path):
    # As the live test (tests/integration/test_prometheus.py) expects of the real pipeline after one poison record.
    records = re.findall(r"^      - record: (\S+)$", ALERTS_FILE.read_text(), re.MULTILINE)
    _none_is_empty(promtool, tmp_path, [("alerts.yml", name) for name in records],
                   _pipeline_without_smtp(dead_letter=True), empty="rides_smtp_deliveries_total")


def test_the_dashboard_file_is_where_grafanas_provisioning_finds_it():
    assert DASHBOARD.parent.name == "dashboards" and DASHBOARD.suffix == ".json"
    provider = (DASHBOARD.parents[1] / "provisioning" / "dashboards" / "rides.yml").read_text()
    assert re.search(r"^      path: /etc/grafana/dashboards$", provider, re.MULTILINE)
    source = (DASHBOARD.parents[1] / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert re.search(r"^    uid: prometheus$", source, re.MULTILINE)
    assert re.search(r"^    url: http://prometheus:9090$", source, re.MULTILINE)
