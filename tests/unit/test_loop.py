"""The one run loop (common.loop) without a broker: it stops on request, always closes and says its summary,
and a batch that cannot be finished in time ends it cleanly."""

from __future__ import annotations

import logging

import pytest

from common import consume, loop
from common.errors import Fatal, Stopped
from common.shutdown import Shutdown


class FakeShape:
    """Polls nothing; process() runs `script`, one step per pass of the loop."""

    consumer = None

    def __init__(self, shutdown: Shutdown, script: list) -> None:
        self.shutdown, self.script = shutdown, list(script)
        self.events: list[str] = []

    def process(self, records) -> None:
        step = self.script.pop(0) if self.script else "stop"
        self.events.append(step)
        if step == "stop":
            self.shutdown.request()
        elif isinstance(step, BaseException):
            raise step

    def tick(self) -> None:
        self.events.append("tick")

    def close(self) -> None:
        self.events.append("close")


@pytest.fixture(autouse=True)
def no_kafka(monkeypatch):
    monkeypatch.setattr(consume, "poll_batch", lambda consumer: [])


def test_the_loop_runs_until_asked_to_stop_then_closes_and_says_its_summary(caplog):
    shutdown = Shutdown()
    shape = FakeShape(shutdown, ["batch", "batch"])
    with caplog.at_level(logging.INFO):
        assert loop.run(shape, shutdown, lambda: "done=2") == 0
    assert shape.events == ["batch", "batch", "stop", "close"]
    assert caplog.messages[-1] == "summary: done=2"


def test_progress_and_tick_every_period():
    shutdown = Shutdown()
    shape = FakeShape(shutdown, ["batch"])
    lines = []
    loop.run(shape, shutdown, lambda: "", every=0.0, progress=lambda: lines.append("p") or "x")
    assert shape.events == ["batch", "tick", "stop", "tick", "close"] and lines == ["p", "p"]


def test_an_unfinished_batch_ends_the_loop_cleanly_with_a_warning(caplog):
    shutdown = Shutdown()
    shape = FakeShape(shutdown, [Stopped()])
    with caplog.at_level(logging.INFO):
        assert loop.run(shape, shutdown, lambda: "s") == 0
    assert shape.events[-1] == "close"
    assert any("nothing of it was committed" in m for m in caplog.messages)
    assert caplog.messages[-1] == "summary: s"


def test_a_fatal_error_still_closes_and_says_the_summary_then_stops_the_script(caplog):
    shutdown = Shutdown()
    shape = FakeShape(shutdown, [Fatal("broken")])
    with caplog.at_level(logging.INFO), pytest.raises(Fatal, match="broken"):
        loop.run(shape, shutdown, lambda: "s")
    assert shape.events[-1] == "close" and caplog.messages[-1] == "summary: s"


def test_tally_lines_are_the_summary_format():
    t = loop.Tally()
    t.update(("emailed", "resent"))
    t["emailed"] += 1
    assert t.line("emailed", "resent", "dead_lettered") == "emailed=2 resent=1 dead_lettered=0"
