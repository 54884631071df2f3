"""common.reachability: one line when Kafka is lost, one when it is back; nothing for a blip or an idle close."""

from __future__ import annotations

import logging

import pytest

from common.reachability import Reachability


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="common.reachability")
    return lambda: [(r.levelname, r.getMessage()) for r in caplog.records]


def run(states: list[tuple[float, bool | None]]) -> None:
    clock = Clock()
    r = Reachability("127.0.0.1:9092", grace=2.0, clock=clock)
    for at, reachable in states:
        clock.now = 100.0 + at
        r.update(reachable)


def test_an_outage_is_said_once_when_it_starts_and_once_when_it_ends(lines):
    run([(0, True), (1, False), (1.5, False), (3.2, False), (5, None), (9, False), (20, False), (31, True), (32, True)])
    said = lines()
    assert [level for level, _ in said] == ["WARNING", "INFO"]
    assert said[0][1].startswith("Kafka is unreachable at 127.0.0.1:9092 (since ")
    assert said[0][1].endswith("); waiting for it")
    assert said[1][1] == "Kafka is back at 127.0.0.1:9092 after 30 s"


def test_two_outages_are_two_pairs_of_lines(lines):
    run([(0, False), (3, False), (4, True), (10, False), (13, False), (15, True)])
    assert [level for level, _ in lines()] == ["WARNING", "INFO", "WARNING", "INFO"]


def test_a_blip_shorter_than_the_grace_period_says_nothing(lines):
    run([(0, True), (1, False), (2.5, False), (2.9, True), (3, False), (4, True)])
    assert lines() == []


def test_cannot_tell_changes_nothing(lines):
    # An idle connection closed by the client, with no attempt since: no outage, and no "back" either.
    run([(0, True), (600, None), (1200, None), (1201, True)])
    assert lines() == []
