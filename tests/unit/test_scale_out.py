"""bench/scale_out.py's pure side, without a cluster: the CPU shares of a window, the instances' summaries added
up, the arguments, the table."""

import importlib.util
import sys
from pathlib import Path

import pytest

# bench/ is a folder of scripts, not a package: load the script by path (it puts bench/ on the path).
_PATH = Path(__file__).resolve().parents[2] / "bench" / "scale_out.py"
_spec = importlib.util.spec_from_file_location("bench_scale_out", _PATH)
assert _spec is not None and _spec.loader is not None
scale = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = scale  # its dataclasses look their module up there
_spec.loader.exec_module(scale)


def test_each_part_gets_its_cores_and_cpu_per_ride_and_other_is_the_busy_time_none_of_them_explains():
    before = {"transaction.py": 10.0, "brokers": 100.0}
    after = {"transaction.py": 18.0, "brokers": 104.0}
    # a 10 s window on 2 cores, 65 % busy: 13 CPU seconds, of which the parts explain 12
    cores, per_ride = scale.shares(before, after, 13.0, window=10.0, rides=40_000)
    assert cores == pytest.approx({"transaction.py": 0.8, "brokers": 0.4, "other": 0.1, "machine": 1.3})
    assert per_ride == pytest.approx({"transaction.py": 200.0, "brokers": 100.0, "other": 25.0, "machine": 325.0})


def test_other_is_never_negative_when_proc_stat_ticks_lag_the_processes():
    cores, _ = scale.shares({"a": 0.0}, {"a": 2.0}, 1.8, window=1.0, rides=1)
    assert cores["other"] == 0.0


def test_the_instances_summaries_add_up():
    line = "2026-12-02 08:00:00,000 INFO    __main__: summary: confirmed={} rejected={} dead_lettered=0 aborted=0"
    total = scale.summed([line.format(10, 1), line.format(20, 2)])
    assert total["confirmed"] == 30 and total["rejected"] == 3 and total["dead_lettered"] == 0


def test_an_instance_without_a_summary_line_is_a_bench_error():
    with pytest.raises(scale.BenchError, match="no summary line"):
        scale.summed(["Traceback (most recent call last):"])


@pytest.mark.parametrize("value", ["0", "1,7", "a", ""])
def test_instance_counts_outside_one_to_six_are_refused(value, capsys):
    with pytest.raises(SystemExit):
        scale.parse_args(["--instances", value])
    assert "--instances" in capsys.readouterr().err


def test_the_defaults_are_one_two_and_three_instances():
    args = scale.parse_args([])
    assert args.counts == [1, 2, 3] and args.rides == scale.DEFAULT_RIDES
    assert scale.parse_args(["--quick"]).rides == scale.QUICK_RIDES


def step(k: int, rate: float):
    return scale.Step(instances=k, rides=60_000, rate=rate, window_s=10.0, before_window=5000, produce_s=3.0,
                      rides_a_transaction=250.0, busy_before=0.02,
                      cores={"transaction.py": 0.9 * k, "brokers": 0.6, "other": 0.1, "machine": 1.6},
                      us_per_ride={"transaction.py": 250.0, "brokers": 150.0, "other": 20.0, "machine": 420.0},
                      outcome="each ride once")


def test_the_table_shows_each_count_its_speed_up_and_where_the_time_goes():
    report = scale.ScaleReport(guarantee="exactly-once", nodes=3, cpus=2, kafka="4.3.1",
                               steps=[step(1, 3000.0), step(2, 4500.0)], wall_seconds=90)
    text = scale.format_table(report)
    rows = [line for line in text.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert rows[0].startswith("| 1 | 3,000 | 1.00 |") and rows[1].startswith("| 2 | 4,500 | 1.50 |")
    # 420 us of CPU a ride in all: 2 cores confirm at most about 4,762 rides/s
    assert "420 us of CPU" in text and "4,762 rides/s" in text


def test_a_group_is_read_from_what_kafka_python_decodes_and_an_undecoded_assignment_is_not_counted():
    # The shape kafka-python 3.0.12's describe_groups() returns (its member_assignment decoded from
    # ConsumerProtocolAssignment; left as bytes when it cannot decode it).
    described = {"group_state": "Stable", "members": [
        {"member_id": "a", "member_assignment": {"assigned_partitions": [
            {"topic": "p.ride_details", "partitions": [0, 1, 2]},
            {"topic": "p.other", "partitions": [0]}], "user_data": None}},
        {"member_id": "b", "member_assignment": {"assigned_partitions": [
            {"topic": "p.ride_details", "partitions": [3, 4]}], "user_data": None}},
        {"member_id": "c", "member_assignment": b"\x00\x03"},
    ]}
    group = scale.describe_group(described, "p.ride_details")
    assert group == scale.Group("Stable", frozenset({"a", "b", "c"}), 5)
