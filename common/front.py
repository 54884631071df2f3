"""api.py's plumbing: Kafka behind an HTTP service (FastAPI on uvicorn), started and stopped like every script.

    connect to Kafka (topics, one producer, the follower that keeps the View), as the other scripts do
    serve HTTP until SIGINT/SIGTERM            # signals flip common.shutdown's flag; uvicorn stops on it
    finally: flush the producer, stop the follower, close, the summary line

A POST publishes with the same guarantee as rides.py (idempotent producer, acks=all) and answers only once
the broker has acknowledged the ride: Door.publication() is the producer's future on the event loop,
awaited without blocking it. While Kafka is known to be unreachable it refuses at once (Unavailable: 503),
sending nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from common import clients, follow, loop, reachability, topics
from common.errors import Fatal
from common.metrics import Watch
from common.settings import ApiSettings
from common.shutdown import Shutdown
from common.view import View

log = logging.getLogger(__name__)


# The cyclic garbage collector, set once everything is built (bench/api_bench.py, 2 cores, 2,500 POSTs/s): with
# Python's defaults (700, 10, 10) it ran 9 % of the time, and its full collections, once or twice a second as the
# view grew, stopped the event loop for tens of milliseconds each (every POST under way waited: the p99). Now what
# start-up built (modules, models, the app: 70,000 objects) is frozen out of every collection, the youngest
# generation is collected every 5,000 objects instead of 700, and a full collection waits for 100 of the middle
# one's instead of 10. Few of the service's objects are garbage cycles (refcounting frees the rest at once), so
# memory does not grow for it.
GC_THRESHOLDS = (5000, 10, 100)
# The event loop shares the GIL with the producer's I/O thread (which settles each ride's acknowledgement) and the
# follower's two threads. A thread that wants the GIL asks the holder to drop it after this long (Python's
# default: 5 ms), and every POST under way waits meanwhile: at 1,000 POSTs/s on a busy 2-core machine 1 ms
# instead of 5 took the p99 from 87-144 ms to 59-90 ms over three runs each, for the same CPU.
SWITCH_INTERVAL = 0.001

# How long the producer waits to fill a batch: each POST waits for its ride's batch, so shorter than the
# pipeline's 10 ms; under load a batch fills sooner anyway. Shorter costs CPU: each produce request costs the
# producer's I/O thread about a millisecond whatever it carries. At 500 POSTs/s, linger 0 / 2 / 5 / 10 ms: api.py
# 0.78 / 0.59 / 0.46 / 0.46 cores, p50 4.4 / 5.0 / 7.8 / 11.3 ms (bench/api_bench.py's generator, one run each).
LINGER_MS = 5
# How long a send() may block the event loop when the producer's buffer is full (Kafka slow or away): then a 503.
SEND_BLOCKS_MS = 100


class Unavailable(Exception):
    """The ride was not accepted (HTTP 503, try again later): Kafka is unreachable (nothing was sent), or did not
    acknowledge in time (the ride may still be stored: a retry with the same Idempotency-Key is safe either way)."""


@dataclass
class Door:
    """What the HTTP handlers share: the settings, the View, the producer and the counts."""

    settings: ApiSettings
    view: View
    producer: KafkaProducer
    watch: Watch
    tally: loop.Tally = field(default_factory=loop.Tally)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # ride_id -> the publication of its request under way: a concurrent retry awaits it instead of sending again
    pending: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    # Whether the view holds what the topics held at start (common.follow): until then a retry could be taken for a
    # new ride and a known ride answered 404, so POST and an unknown GET answer 503.
    ready: Callable[[], bool] = lambda: True
    # reachability.reachable(producer) is False, as of the event loop's time it was last asked (uvloop's clock
    # counts whole milliseconds): asked once per millisecond, not once per POST.
    _unreachable: tuple[float, bool] = (-1.0, False)

    def publication(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        """Send one record to `topic` (a common.topics name): a future of the event loop, made at once (no task, no
        wait_for: POST /rides' hot path). It raises Unavailable now if Kafka is known to be unreachable or the
        producer's buffer is full; the future settles with None once Kafka acknowledged the record, or with
        Unavailable when it did not within --ack-timeout."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._unreachable[0] != now:
            self._unreachable = (now, reachability.reachable(self.producer) is False)
        if self._unreachable[1]:
            raise Unavailable("Kafka is unreachable")
        done: asyncio.Future[None] = loop.create_future()
        try:
            sent = self.producer.send(self.settings.topic(topic), key=key, value=value)
        except KafkaTimeoutError:  # the producer's buffer is full (Kafka slow or away): nothing was taken
            raise Unavailable("Kafka is not taking rides fast enough") from None
        timer = loop.call_later(self.settings.ack_timeout, _expire, done, self.settings.ack_timeout)
        # Settled on the producer's I/O thread: hand the outcome to the event loop's thread.
        sent.add_both(loop.call_soon_threadsafe, _settle, done, timer)
        return done


def _settle(future: asyncio.Future[None], timer: asyncio.TimerHandle, outcome: object) -> None:
    """On the event loop: the producer's outcome for one record (its metadata, or the exception it failed with)."""
    timer.cancel()
    if future.done():
        return  # the ack timeout came first: already Unavailable
    if isinstance(outcome, BaseException):  # the producer gave up: delivery timed out, or Kafka refused it
        future.set_exception(Unavailable(f"Kafka did not take the ride ({type(outcome).__name__})"))
    else:
        future.set_result(None)


def _expire(future: asyncio.Future[None], seconds: float) -> None:
    if not future.done():
        future.set_exception(Unavailable(f"Kafka did not acknowledge within {seconds:g} s: the ride may still be "
                                         f"stored; retry with the same Idempotency-Key"))


class _Server(uvicorn.Server):
    """uvicorn, stopped by common.shutdown's flag rather than signal handlers of its own (which would also
    raise the signal again once stopped)."""

    def __init__(self, config: uvicorn.Config, shutdown: Shutdown, stopping: Callable[[], None]) -> None:
        super().__init__(config)
        self.stop_flag, self.stopping = shutdown, stopping

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def on_tick(self, counter: int) -> bool:  # uvicorn's main loop asks ten times a second
        if self.stop_flag.requested and not self.should_exit:
            self.should_exit = True
            self.stopping()  # now, not after the grace period: open streams end, no request is cut off mid-way
        return await super().on_tick(counter)


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening before uvicorn starts: the URL printed once ready already takes connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise Fatal(f"cannot serve on {host}:{port} ({e.strerror or e}): pick another --port (0: any free one) "
                    f"or --host") from None
    sock.listen(2048)
    return sock


def run(settings: ApiSettings, make_app: Callable[[Door], FastAPI], summary: Callable[[loop.Tally], str]) -> int:
    """Connect to Kafka, serve make_app(door) on --host:--port until SIGINT/SIGTERM, then flush and close."""
    shutdown = Shutdown.on_signals()
    # uvicorn's own lines (started, waiting for startup, ...) only at DEBUG: the script says what matters.
    logging.getLogger("uvicorn.error").setLevel(logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING)
    sock = listening_socket(settings.host, settings.port)  # first: a port in use stops it before Kafka is asked
    watch = loop.watch(settings) or Watch("api.py", "", settings.wait)
    view = View(settings.view_rides, stats_groups=settings.lag_groups)
    tally = loop.Tally()
    producer, follower = None, None
    try:
        clients.ensure_topics(settings, shutdown)
        producer = clients.connect(settings, shutdown, lambda: clients.producer(
            settings, "api", writes_to=[settings.topic(topics.RIDE_DETAILS)],
            linger_ms=LINGER_MS, max_block_ms=SEND_BLOCKS_MS), "producer")
        follower = clients.connect(settings, shutdown, lambda: _started(follow.Follower(
            settings, view, settings.lag_groups, settings.history_minutes * 60, beat=watch.health.beat)), "follower")
        door = Door(settings, view, producer, watch, tally, ready=follower.caught_up.is_set)
        watch.count(door.tally, {key: key for key in OUTCOMES})
        unlisten = reachability.listen(watch.kafka)
        app = make_app(door)
        app.router.lifespan_context = _lifespan(door, sock, follower, shutdown)
        config = uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="on", log_config=None,
                                access_log=False, server_header=False, timeout_graceful_shutdown=2)
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        sys.setswitchinterval(SWITCH_INTERVAL)
        _Server(config, shutdown, door.stopping.set).run(sockets=[sock])
        unlisten()
    finally:
        watch.stopping("asked to stop (SIGINT/SIGTERM)" if shutdown.requested else "stopped")
        sock.close()
        if follower is not None:
            follower.stop()
        if producer is not None:
            clients.close_producer(producer, timeout=3)  # the accepted rides were acknowledged already
        watch.stop()
    log.info("summary: %s", summary(tally))
    return 0


# The counts of the summary line, and of rides_processed_total{script="api.py"}.
OUTCOMES = ("accepted", "replayed", "conflicts", "invalid", "unavailable")


def _started(follower: follow.Follower) -> follow.Follower:
    try:
        follower.start()
    except BaseException:
        follower.stop()
        raise
    return follower


def _lifespan(door: Door, sock: socket.socket, follower: follow.Follower, shutdown: Shutdown):
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        watcher = asyncio.create_task(_watch_kafka(door))
        # Ready means a POST can be taken: once the view holds what the topics held at start (before, a retry could
        # pass for a new ride). Connections wait in the socket's backlog meanwhile.
        while not follower.caught_up.is_set() and not shutdown.requested:
            await asyncio.sleep(0.05)
        host, port = sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        log.info("serving on %s (the live page; POST /rides, GET /rides/{ride_id}, /stats, /healthz, /metrics)", url)
        try:
            yield
        finally:
            door.stopping.set()  # the live page's streams end
            watcher.cancel()

    return lifespan


async def _watch_kafka(door: Door) -> None:
    """One line when the producer loses Kafka and one when it is back; a progress line every 10 s."""
    last = time.monotonic()
    while True:
        reachability.check(door.producer)
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            log.info("progress: %s", door.tally.line(*OUTCOMES))
        await asyncio.sleep(0.5)
