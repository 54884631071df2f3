"""What a long-running script shows to Prometheus and to its orchestrator, given --metrics-port.

    GET /metrics   the Prometheus text format (prometheus_client): the counts of the summary line, consumer
                   lag in records and in seconds, end-to-end latency by stage, batch durations, transactions,
                   dead letters by reason, SMTP deliveries, Kafka reconnects, and the process' own
    GET /healthz   200 and one line while the loop makes progress (or idles with Kafka reachable); 503 and
                   one line saying why when it is stuck: no pass of the loop for STALL_AFTER seconds, Kafka
                   unreachable for longer than the script's --wait, or the script stopping

The hot path pays nothing for the counts: they are the loop's own Tally, read when Prometheus scrapes
(TallyCollector). The loops report once per batch (Watch); only the end-to-end histogram observes each ride.
No Kafka here: the loops hand in what they read from their clients.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from common.errors import Fatal

log = logging.getLogger(__name__)

# /healthz answers 503 once the loop has not come round for this long while Kafka is reachable (an outage has
# its own limit: --wait). A pass is one poll (at most 0.5 s when idle) and one batch: 500 records take well
# under a second, a changelog restore a few; over SMTP each attempt beats too, and one may take its 30 s
# socket timeout and a 4 s backoff. Longer than all of those is stuck.
STALL_AFTER = 60.0

# Request-to-stage latency: 5 ms (a quiet pipeline) to 5 minutes (a consumer catching up on a backlog).
END_TO_END_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# One batch's work and commit: a few ms at a trickle, up to a second or so for 500 records.
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0)

# A dead letter's reason, as the loops and stores write it, sorted into a few classes (a label must not take a
# value per record): the first pattern found in the reason names its class.
REASON_CLASSES = (
    ("unreadable", "kafka-python cannot read this record"),
    ("tombstone", "empty value (tombstone)"),
    ("key_mismatch", "is not the ride_id"),
    ("wrong_partition", "but its key belongs in partition"),
    ("conflicting_request", "was already decided for a different request"),
    ("refused_by_mail_server", "the mail server refused"),
    ("invalid", " invalid: "),  # pydantic: "RideRequest invalid: pickup.lat: ..." (not JSON is one of these)
)
OTHER_REASON = "unprocessable"  # a pure step failed otherwise: cannot be confirmed, rendered, folded


def reason_class(reason: str) -> str:
    """The class of a dead letter's reason: one of REASON_CLASSES' names, or OTHER_REASON."""
    return next((name for name, pattern in REASON_CLASSES if pattern in reason), OTHER_REASON)


class Health:
    """Whether the script is doing its job, for /healthz: the loop beats once per pass; Kafka's reachability
    and a stop are reported to it. Written by the loop's thread, read by the server's (plain attributes, each
    read once per answer)."""

    def __init__(self, unreachable_after: float, stall_after: float = STALL_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.unreachable_after, self.stall_after, self.clock = unreachable_after, stall_after, clock
        self.last_beat = clock()
        self.kafka_lost_at: float | None = None  # clock time Kafka was first seen unreachable; None: reachable
        self.stopping: str | None = None  # why the script is stopping, once it is

    def beat(self) -> None:
        self.last_beat = self.clock()

    def kafka(self, reachable: bool, lost_at: float | None = None) -> None:
        self.kafka_lost_at = None if reachable else (lost_at if lost_at is not None else self.clock())

    def status(self) -> tuple[bool, str]:
        """(healthy, one line saying why)."""
        now, stopping, lost_at, beat = self.clock(), self.stopping, self.kafka_lost_at, self.last_beat
        if stopping:
            return False, f"stopping: {stopping}"
        if lost_at is not None:  # during an outage the loop may wait in mid-batch: the wait is the limit
            if now - lost_at > self.unreachable_after:
                return False, (f"Kafka unreachable for {now - lost_at:.0f} s, longer than the "
                               f"{self.unreachable_after:g} s wait")
            return True, (f"ok: Kafka unreachable for {now - lost_at:.0f} s, within the "
                          f"{self.unreachable_after:g} s wait")
        if now - beat > self.stall_after:
            return False, (f"stuck: the loop has not come round for {now - beat:.0f} s "
                           f"(limit {self.stall_after:g} s)")
        return True, f"ok: the loop came round {now - beat:.1f} s ago"


class TallyCollector(Collector):
    """A counter family read from the loop's Tally at each scrape (rides_processed_total: the summary line's
    counts), so that the two can never disagree and counting costs the loop nothing more."""

    def __init__(self, name: str, documentation: str, script: str, tally: Callable[[], Mapping[str, int]],
                 outcomes: Mapping[str, str]) -> None:
        self.name, self.documentation, self.script = name, documentation, script
        self.tally, self.outcomes = tally, outcomes  # outcomes: tally key -> outcome label

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=["script", "outcome"])
        counts = self.tally()
        for key, outcome in self.outcomes.items():
            family.add_metric([self.script, outcome], counts.get(key, 0))
        yield family


class LagCollector(Collector):
    """Consumer lag, from what the loop last read of its consumer (Watch.lag): records per partition, and the
    age of the oldest ride not processed yet."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch

    def collect(self) -> Iterable[Metric]:
        w = self.watch
        records = GaugeMetricFamily("rides_consumer_lag_records", "Records of the partition not processed yet "
                                    "(its high watermark minus the group's position)",
                                    labels=["group", "topic", "partition"])
        for (topic, partition), lag in sorted(w.lags.items()):
            records.add_metric([w.group, topic, str(partition)], lag)
        yield records
        seconds = GaugeMetricFamily("rides_consumer_lag_seconds", "How old the oldest ride not processed yet is "
                                    "(0 when caught up)", labels=["group"])
        seconds.add_metric([w.group], w.lag_seconds())
        yield seconds


class Watch:
    """A script's metrics and health. The loops call it once per pass (polled, processed) and once per batch
    (ended); reachability changes reach it through kafka(); serve() answers Prometheus and /healthz."""

    def __init__(self, script: str, group: str, unreachable_after: float, *,
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time) -> None:
        self.script, self.group, self.clock = script, group, clock
        self.registry = registry or CollectorRegistry()
        for standard in (ProcessCollector, PlatformCollector, GCCollector):  # RSS, CPU, GC: the process' own
            standard(registry=self.registry)
        self.health = Health(unreachable_after)
        r = self.registry
        self.end_to_end = Histogram("rides_end_to_end_seconds", "From a ride's requested_at to the moment this "
                                    "stage was done with it", ["script", "stage"], buckets=END_TO_END_BUCKETS,
                                    registry=r)
        self.batch_seconds = Histogram("rides_batch_duration_seconds", "One batch's work and commit",
                                       ["script"], buckets=BATCH_BUCKETS, registry=r).labels(script)
        self.dead_letters = Counter("rides_dead_letters", "Records set aside in a dead-letter topic, by the class "
                                    "of their reason", ["script", "topic", "reason"], registry=r)
        self.smtp = Counter("rides_smtp_deliveries", "SMTP delivery attempts by result (delivered, retried: a "
                            "temporary failure, refused: 5xx for good, failed: every attempt failed)",
                            ["script", "result"], registry=r)
        self.reconnects = Counter("rides_kafka_reconnects", "Times Kafka was reachable again after an outage",
                                  ["script"], registry=r).labels(script)
        self.reachable = Gauge("rides_kafka_reachable", "1 while Kafka is reachable, 0 during an outage",
                               ["script"], registry=r).labels(script)
        self.reachable.set(1)
        self.lags: dict[tuple[str, int], int] = {}  # (topic, partition) -> records behind; replaced, not mutated
        self._oldest_ms: int | None = None  # timestamp of the oldest ride known not to be processed yet
        self._lost: dict[int, float] = {}  # id of each client that has lost Kafka -> since when (monotonic)
        if group:
            self.registry.register(LagCollector(self))
        self._server: WSGIServer | None = None

    # -------------------------------------------------------------------------------- from the loops

    def count(self, tally: Mapping[str, int] | Callable[[], Mapping[str, int]], outcomes: Mapping[str, str]) -> None:
        """Serve these counts as rides_processed_total{outcome} (outcomes: tally key -> outcome label); tally: the
        loop's Tally, or what returns the counts when asked (read from the server's thread)."""
        counts = tally if callable(tally) else (lambda: tally)
        self.registry.register(TallyCollector("rides_processed", "Rides by what this script did with them (the "
                                              "summary line's counts)", self.script, counts, outcomes))

    def transactions(self, tally: Callable[[], Mapping[str, int]], committed: str, aborted: str) -> None:
        """Serve rides_transactions_total{outcome="committed"|"aborted"} from these keys of tally()."""
        self.registry.register(TallyCollector("rides_transactions", "Kafka transactions (one per batch) by "
                                              "outcome", self.script, tally,
                                              {committed: "committed", aborted: "aborted"}))

    def polled(self, records: Sequence[Any]) -> None:
        """A pass of the loop has polled these records (ConsumerRecords: topic, partition, timestamp). Until
        they are processed, the oldest of them is the oldest ride waiting."""
        self.health.beat()
        # A stand-in for an unreadable record has no timestamp (-1): it says nothing of any ride's age.
        stamps = [r.timestamp for r in records if r.timestamp >= 0]
        if stamps:
            oldest = min(stamps)
            if self._oldest_ms is None or oldest < self._oldest_ms:
                self._oldest_ms = oldest

    def processed(self, lags: dict[tuple[str, int], int], records: Sequence[Any]) -> None:
        """The batch is done and committed; lags: the records left per partition. Behind, a partition's next
        ride is younger than its last one processed: the oldest of those last ones bounds the age of the
        oldest ride still waiting (the figure errs old by at most a batch's time span)."""
        self.health.beat()
        self.lags = lags
        if not any(lags.values()):
            self._oldest_ms = None
        elif records:
            last: dict[tuple[str, int], int] = {}
            for r in records:  # in offset order within a partition: the last one stays
                if r.timestamp >= 0:
                    last[r.topic, r.partition] = r.timestamp
            behind = [ts for tp, ts in last.items() if lags.get(tp)]
            if behind:  # else the partitions behind were not in this batch: what was known of them stands
                self._oldest_ms = min(behind)

    def lag_seconds(self) -> float:
        oldest = self._oldest_ms
        if oldest is None or not any(self.lags.values()):
            return 0.0
        return max(0.0, self.clock() - oldest / 1000)

    def done(self, stage: str, requested: Iterable[datetime]) -> None:
        """Rides this stage has just finished (their effects committed): requested_at to now, each."""
        now = self.clock()
        histogram = self.end_to_end.labels(self.script, stage)
        for at in requested:
            histogram.observe(max(0.0, now - at.timestamp()))

    def dead_letter(self, topic: str, reason: str) -> None:
        self.dead_letters.labels(self.script, topic, reason_class(reason)).inc()

    def delivery(self, result: str) -> None:
        """One SMTP attempt's result; an attempt is progress too (a batch of emails may take long)."""
        self.smtp.labels(self.script, result).inc()
        self.health.beat()

    def kafka(self, client: object, reachable: bool) -> None:
        """One of the script's clients (its consumer, its producer) lost Kafka (after the grace
        common.reachability allows a blip) or has it back. Kafka is reachable again once every client that lost
        it has it back: a producer that lost it in mid-batch says so apart from the consumer."""
        if reachable:
            if self._lost.pop(id(client), None) is not None and not self._lost:
                self.reconnects.inc()
        else:
            self._lost.setdefault(id(client), time.monotonic())
        self.reachable.set(0 if self._lost else 1)
        self.health.kafka(not self._lost, min(self._lost.values()) if self._lost else None)

    def stopping(self, why: str) -> None:
        self.health.stopping = why

    # -------------------------------------------------------------------------------- the HTTP side

    def app(self, environ: dict, start_response: Callable) -> list[bytes]:
        """The WSGI application: /metrics (prometheus_client's own), /healthz, and 404 for anything else."""
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            healthy, why = self.health.status()
            start_response("200 OK" if healthy else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")])
            return [f"{why}\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /healthz\n"]

    def serve(self, host: str, port: int) -> str:
        """Serve on host:port (0: any free port) in a daemon thread until stop(); returns the base URL."""
        self._metrics_app = make_wsgi_app(self.registry)
        server_class = _ThreadingServer6 if ":" in host else _ThreadingServer  # "::1": IPv6 loopback
        try:
            self._server = make_server(host, port, self.app, server_class=server_class, handler_class=_Quiet)
        except OSError as e:
            raise Fatal(f"cannot serve metrics on {host}:{port} ({e.strerror or e}): pick another --metrics-port "
                        f"(0: any free one) or --metrics-host") from None
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        bound_host, bound_port = self._server.server_address[:2]
        url = f"http://{_url_host(str(bound_host))}:{bound_port}"
        log.info("metrics on %s/metrics, health on %s/healthz", url, url)
        return url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds the script's exit


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # a line per scrape would drown the script's own
        pass
