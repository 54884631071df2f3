"""The one consume loop every consumer runs, whatever its shape:

    while not shutdown.requested:            # SIGINT/SIGTERM only set the flag (common.shutdown)
        shape.process(poll_batch(consumer))  # decode or set aside, do the work, commit
        every few seconds: a progress line, the shape's tick()
    finally: shape.close(); the summary line

A shape is what a script does with a batch: common.transform (consume-transform-produce: transaction.py)
or common.apply (consume-and-apply: email.py, analysis.py). poll_batch says once when Kafka is lost and
once when it is back; a stop that cannot finish in time exits through common.shutdown's deadline. With
--metrics-port, the loop also tells its Watch (common.metrics) of every pass: health, lag, batch durations.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord

from common import consume, reachability
from common.errors import Stopped
from common.metrics import Watch
from common.settings import ServiceSettings
from common.shutdown import Shutdown

log = logging.getLogger(__name__)


class Shape(Protocol):
    consumer: KafkaConsumer

    def process(self, records: list[ConsumerRecord]) -> None:
        """Do a batch's work and commit it; an empty batch is a chance to catch up (say, a restore).
        Raises Stopped when asked to stop before the batch could be finished."""

    def tick(self) -> None:
        """Periodic housekeeping, between batches."""

    def close(self) -> None:
        """Flush, commit what is done, close the clients."""


class Tally(Counter[str]):
    """The counts a script reports: `line("a", "b")` is "a=1 b=0", the progress and summary lines' format."""

    def line(self, *keys: str) -> str:
        return " ".join(f"{key}={self[key]}" for key in keys)


def watch(settings: ServiceSettings, group: str = "") -> Watch | None:
    """The script's Watch, serving on --metrics-port already, or None without it. `group`: a consumer's group
    (its lag is shown); a producer has none."""
    if settings.metrics_port is None:
        return None
    w = Watch(Path(sys.argv[0]).name or "python", group, unreachable_after=settings.wait)
    w.serve(settings.metrics_host, settings.metrics_port)
    return w


def run(shape: Shape, shutdown: Shutdown, summary: Callable[[], str], *, every: float = 10.0,
        progress: Callable[[], str] | None = None, watch: Watch | None = None) -> int:
    """Run `shape` until asked to stop; log `progress()` and call `shape.tick()` every `every` seconds, and
    `summary()` once at the end, whatever ended the loop. `watch` hears of every pass, and stops serving last."""
    next_report = time.monotonic() + every
    unlisten = reachability.listen(watch.kafka) if watch else None
    try:
        while not shutdown.requested:
            records = consume.poll_batch(shape.consumer)
            if watch is None:
                shape.process(records)
            else:
                _watched(shape, records, watch)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + every
                if progress is not None:
                    log.info("progress: %s", progress())
                shape.tick()
    except Stopped:
        log.warning("stopped with a batch unfinished: nothing of it was committed; the next run processes it")
    except BaseException as e:
        if watch:
            watch.stopping(f"{type(e).__name__}: {e}")
        raise
    finally:
        if watch and not watch.health.stopping:
            watch.stopping("asked to stop (SIGINT/SIGTERM)")  # 503 while it closes
        try:
            shape.close()
        finally:
            log.info("summary: %s", summary())
            if watch:
                unlisten and unlisten()
                watch.stop()
    return 0


def _watched(shape: Shape, records: list[ConsumerRecord], watch: Watch) -> None:
    """One batch, told to the watch: the oldest ride waiting while it runs, its duration, what is left after."""
    watch.polled(records)
    started = time.perf_counter()
    shape.process(records)
    if records:
        watch.batch_seconds.observe(time.perf_counter() - started)
    watch.processed(consume.lags(shape.consumer), records)
