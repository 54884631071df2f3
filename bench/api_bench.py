"""`make bench-api`: api.py's POST /rides at saturation and its latency at 500 and 1,000 requests/s, next to
rides.py's produce rate, in one run against one broker (issue: at least 2,000 accepted rides/s, p99 under 25 ms
at 1,000/s on 2 cores, every accepted ride in ride_details once). bench/README.md says how each figure is taken.

    .venv/bin/python bench/api_bench.py [--seconds S] [--saturation-seconds S] [--connections C] [--rides N]
                                  [--bootstrap-servers HOST:PORT] [--json] [--quick]

Without --bootstrap-servers it starts its own broker (tools.broker.LocalBroker) in a temporary folder and stops
it at the end. Each API figure starts one api.py of its own on fresh topics (its own --topic-prefix), warms it
up, and drives it from a load generator in another process (this file, run with --generate: Python asyncio on
uvloop, raw keep-alive HTTP/1.1, bodies built before the clock starts):

- saturation: C connections (default 64), each sending its next ride as soon as the last one was answered, for
  --saturation-seconds (or until its pre-built rides run out): the 202s per second;
- 500/s and 1,000/s: open loop: request i is due at start + i/R whatever happened to the others, and its latency
  runs from that due time to its answer, so that a stall of the service is not hidden by a client that waits
  for it (no coordinated omission); p50 / p95 / p99 / max;
- rides.py --count N --seed S on topics of its own: the rate of its summary line (as bench/pipeline.py takes it);
- reconciliation: each figure's ride_details read back (no consumer group, read_committed): every ride answered
  202 is there exactly once, and nothing else is; api.py's summary line counts the same 202s.

Loopback only (127.0.0.1), bounded in time and count; every process started is stopped by its pid. The table
(or JSON with --json) goes to stdout, progress to stderr; a count that does not reconcile is one line and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import select
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# `python bench/api_bench.py` puts bench/ on the path, not the project. Appended, not prepended: the project's
# email.py must not shadow the standard library's `email` package in this process.
sys.path.append(str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import percentiles  # noqa: E402
from runs import (  # noqa: E402
    PROJECT_ROOT,
    BenchError,
    Run,
    cpu_seconds,
    last_line,
    machine_busy,
    on_a_broker,
    peak_rss_mb,
    progress,
    read_records,
    run_rides,
)

RATES = (500, 1000)  # requests/s: the issue's latency figures
GOAL_RATE = 2000.0  # accepted rides/s at saturation
GOAL_P99_MS, GOAL_P99_AT = 25.0, 1000  # p99 under 25 ms at 1,000/s
CONNECTIONS = 64  # saturation's keep-alive connections: 32, 64 and 128 gave the same rate within this machine's noise
OPEN_LOOP_CONNECTIONS = 64  # the open-loop runs' pool: a due request waits for a free one, and that wait counts
SECONDS, SATURATION_SECONDS = 15.0, 20.0
WARM_REQUESTS = 1000  # per api.py, untimed: its first batches, the broker's new topic, the follower catching up
MAX_RATE = 6000  # saturation pre-builds SATURATION_SECONDS x this many rides: well above one api.py's rate
DEFAULT_RIDES, DEFAULT_SEED = 50_000, 7
QUICK = {"seconds": 2.0, "saturation_seconds": 2.0, "rides": 3000, "warm": 100}
READY_TIMEOUT = 60.0  # api.py's start (Kafka clients, topics, the follower) and the generator's bodies
ANSWER_TIMEOUT = 30.0  # after its last request is due, a run that has not had every answer is an error


# ------------------------------------------------------------------------------------ the load generator
#
# A separate process (`bench/api_bench.py --generate SPEC`), so that it shares the cores with api.py as a client on
# the same machine would, and its CPU is its own (reported). It builds its bodies, warms api.py up, says
# "ready" on stdout, waits for "go" on stdin, runs, says "done", and writes what each request got to a file.


def form_bodies(n: int, seed: int) -> list[tuple[str, bytes]]:
    """N distinct POST /rides bodies (ride_id, JSON), drawn as rides.py draws its rides (its customers, its
    city's demand, about 2 % outside the service area): the form's fields with a ride_id of the client's."""
    import rides

    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    out = []
    for _ in range(n):
        f = rides.ride_fields(rng, now)
        ride_id = str(f["ride_id"])
        body = {"ride_id": ride_id, "customer_id": f["customer_id"], "customer_email": f["customer_email"],
                "customer_name": f["customer_name"], "pickup": {"lat": f["pickup"]["lat"], "lon": f["pickup"]["lon"]},
                "dropoff": {"lat": f["dropoff"]["lat"], "lon": f["dropoff"]["lon"]}, "passengers": f["passengers"]}
        out.append((ride_id, json.dumps(body, separators=(",", ":")).encode()))
    return out


def http_request(host: str, body: bytes) -> bytes:
    return (b"POST /rides HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (host.encode(), len(body))) + body


# What a request got when no HTTP status says it; UNSENT: not sent (the closed loop's time was up first).
UNSENT, CONNECTION_ERROR, WRONG_RIDE, NO_ANSWER = -1, 0, 1, 2


class Connection:
    """One keep-alive HTTP/1.1 connection: one request at a time, reopened after an error."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, request: bytes, ride_id: bytes) -> int:
        """The answer's HTTP status (202 only if its body names the ride), or CONNECTION_ERROR."""
        try:
            await self.open()
            assert self.reader is not None and self.writer is not None
            self.writer.write(request)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lowered = head.lower()
            at = lowered.find(b"\r\ncontent-length:")
            if at < 0:
                raise ConnectionError("an answer without Content-Length")
            length = int(lowered[at + 17:lowered.index(b"\r\n", at + 2)])
            body = await self.reader.readexactly(length)
            if b"\r\nconnection: close" in lowered:
                self.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            return CONNECTION_ERROR
        return WRONG_RIDE if status == 202 and ride_id not in body else status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(conns: list[Connection], requests: list[tuple[bytes, bytes]], seconds: float,
                      status: list[int], latency: list[float]) -> float:
    """Each connection sends its next request once the last is answered, until `seconds` have passed or the
    requests run out; returns the seconds from the first send to the last answer."""
    clock = time.perf_counter  # uvloop's loop.time() is in whole milliseconds
    cursor = iter(range(len(requests)))
    started = clock()
    stop_at = started + seconds

    async def worker(conn: Connection) -> None:
        for i in cursor:
            sent = clock()
            if sent >= stop_at:
                return
            request, ride_id = requests[i]
            status[i] = NO_ANSWER
            status[i] = await conn.post(request, ride_id)
            latency[i] = clock() - sent

    await asyncio.gather(*(worker(c) for c in conns))
    return clock() - started


async def open_loop(conns: list[Connection], requests: list[tuple[bytes, bytes]], rate: float,
                    status: list[int], latency: list[float]) -> tuple[float, float]:
    """Request i is due at start + i / rate. A dispatcher hands each due request to the connections' queue at
    its due time; its latency runs from its due time (not from when a connection was free to send it) to its
    answer. Returns (seconds from the first due time to the last answer, the dispatcher's largest delay)."""
    clock = time.perf_counter  # uvloop's loop.time() is in whole milliseconds
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    start = clock() + 0.01
    late = 0.0

    async def dispatch() -> None:
        nonlocal late
        i, n = 0, len(requests)
        while i < n:
            now = clock()
            if start + i / rate <= now:
                late = max(late, now - (start + i / rate))
            while i < n and start + i / rate <= now:
                queue.put_nowait(i)
                i += 1
            if i < n:  # uvloop's timers count whole milliseconds: a shorter sleep would spin
                await asyncio.sleep(max(start + i / rate - clock(), 0.001))
        for _ in conns:
            queue.put_nowait(None)

    async def worker(conn: Connection) -> None:
        while (i := await queue.get()) is not None:
            request, ride_id = requests[i]
            status[i] = await conn.post(request, ride_id)
            latency[i] = clock() - (start + i / rate)

    await asyncio.gather(dispatch(), *(worker(c) for c in conns))
    return clock() - start, late


async def generate(spec: dict, results: Path) -> None:
    host, port = spec["host"], spec["port"]
    bodies = form_bodies(spec["warm"] + spec["count"], spec["seed"])
    requests = [(http_request(host, body), ride_id.encode()) for ride_id, body in bodies]
    warm, timed = requests[:spec["warm"]], requests[spec["warm"]:]
    conns = [Connection(host, port) for _ in range(spec["connections"])]
    # The warm-up: api.py's first batches, the broker's new topic, the follower reading them back; then every
    # connection opened, before the clock starts.
    warm_status, latency = [UNSENT] * len(warm), [0.0] * len(warm)
    await closed_loop(conns[:8], warm, 60.0, warm_status, latency)
    await asyncio.gather(*(c.open() for c in conns))
    # Closed loop: a request not sent when the time is up is UNSENT; open loop: every request falls due, and one
    # not answered within the run's limit is NO_ANSWER.
    status = [UNSENT if spec["mode"] == "closed" else NO_ANSWER] * len(timed)
    latency = [0.0] * len(timed)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
    cpu = time.process_time()
    late = 0.0
    limit = (spec["seconds"] if spec["mode"] == "closed" else len(timed) / spec["rate"]) + ANSWER_TIMEOUT
    try:
        if spec["mode"] == "closed":
            seconds = await asyncio.wait_for(closed_loop(conns, timed, spec["seconds"], status, latency), limit)
        else:
            seconds, late = await asyncio.wait_for(open_loop(conns, timed, spec["rate"], status, latency), limit)
    except asyncio.TimeoutError:
        seconds = limit  # the requests still waiting keep NO_ANSWER: errors
    cpu = time.process_time() - cpu
    print("done", flush=True)
    for c in conns:
        c.close()
    results.write_text(json.dumps({
        "warm": [[bodies[i][0], s] for i, s in enumerate(warm_status)],
        "timed": [[bodies[len(warm) + i][0], s, latency[i] * 1000] for i, s in enumerate(status) if s != UNSENT],
        "seconds": seconds, "cpu_seconds": cpu, "late_ms": late * 1000}))


def generator_main(spec_path: str) -> int:
    import uvloop

    spec = json.loads(Path(spec_path).read_text())
    uvloop.run(generate(spec, Path(spec["results"])))
    return 0


# ------------------------------------------------------------------------------------ measuring


@dataclass
class ApiRun:
    """One API figure's run: what the generator measured and what the processes used meanwhile."""

    name: str
    mode: str  # "closed" (saturation) or "open" (a fixed rate)
    rate: float | None  # open loop: requests/s scheduled
    connections: int
    requests: int  # sent in the timed part
    accepted: int  # 202s in the timed part
    errors: dict[str, int]  # anything but a 202, by what it was
    seconds: float
    accepted_per_s: float
    latency_ms: dict[str, float]  # p50, p95, p99, max
    cpu_cores: dict[str, float | None]  # api.py, the generator, the broker (own broker only), the whole machine
    late_ms: float = 0.0  # open loop: the dispatcher's largest delay past a due time
    api_peak_rss_mb: float | None = None  # api.py's VmHWM once the run is over, just before it is stopped
    answered: int = 0  # rides answered 202, warm-up included: each found once in ride_details
    reconciled: str = ""


@dataclass
class ApiReport:
    machine: dict[str, str]
    runs: list[ApiRun] = field(default_factory=list)
    rides_py: float | None = None  # rides.py's produce rate, rides/s
    rides_py_count: int = 0
    checks: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0


ERROR_NAMES = {CONNECTION_ERROR: "connection error", WRONG_RIDE: "202 naming another ride", NO_ANSWER: "no answer"}


def start_api(tree: Path, bootstrap: str, prefix: str, work_dir: Path, procs: list) -> tuple[Run, str, int]:
    """The tree's api.py on a free port of 127.0.0.1 and these fresh topics; (it, host, port) once it serves."""
    api = Run(tree, "api.py", "--port", "0", "--host", "127.0.0.1", "--bootstrap-servers", bootstrap,
              "--topic-prefix", prefix, log_dir=work_dir)
    procs.append(api)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        found = re.search(r"serving on http://([0-9.]+):(\d+)", api.log())
        if found:
            return api, found.group(1), int(found.group(2))
        if not api.running:
            raise BenchError(f"api.py exited {api.process.returncode}: {last_line(api.log())}")
        time.sleep(0.05)
    raise BenchError(f"api.py not serving within {READY_TIMEOUT:.0f} s: {last_line(api.log())}")


class Generator:
    """The load generator's process (this file with --generate), driven through its stdin and stdout."""

    def __init__(self, spec: dict, work_dir: Path) -> None:
        self.spec_path = work_dir / f"generator-{uuid.uuid4().hex[:8]}.json"
        self.results = self.spec_path.with_suffix(".results.json")
        self.log_path = self.spec_path.with_suffix(".log")
        self.spec_path.write_text(json.dumps({**spec, "results": str(self.results)}))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--generate",
                                             str(self.spec_path)], cwd=PROJECT_ROOT, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=log)

    def expect(self, word: str, timeout: float) -> None:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline().decode().strip() if ready else ""
        if line != word:
            self.kill()
            why = last_line(self.log_path.read_text(errors="replace")) if self.log_path.exists() else ""
            raise BenchError(f"load generator: expected {word!r} within {timeout:.0f} s, got {line!r} {why}".strip())

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def finish(self) -> dict:
        try:
            code = self.process.wait(timeout=READY_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError("load generator: no results within a minute of its end") from None
        if code != 0:
            raise BenchError(f"load generator exited {code}: {last_line(self.log_path.read_text(errors='replace'))}")
        return json.loads(self.results.read_text())

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def api_run(name: str, tree: Path, bootstrap: str, prefix: str, spec: dict, work_dir: Path, procs: list,
            broker_pid: int | None) -> ApiRun:
    """The tree's api.py on fresh topics, warmed up, then driven by the generator as `spec` says; checked
    afterwards."""
    from common import cli, topics

    api, host, port = start_api(tree, bootstrap, prefix, work_dir, procs)
    gen = Generator({**spec, "host": host, "port": port}, work_dir)
    procs.append(gen)
    gen.expect("ready", READY_TIMEOUT + spec["warm"] / 100)
    pids = {"api.py": api.process.pid, "load generator": gen.process.pid, "broker": broker_pid}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    busy0, t0 = machine_busy(), time.perf_counter()
    gen.go()
    timed_for = spec["seconds"] if spec["mode"] == "closed" else spec["count"] / spec["rate"]
    gen.expect("done", timed_for + ANSWER_TIMEOUT + 10)
    wall = time.perf_counter() - t0
    busy1 = machine_busy()
    cpu: dict[str, float | None] = {}
    for k, pid in pids.items():
        before, after = cpu0[k], cpu_seconds(pid)
        cpu[k] = (after - before) / wall if before is not None and after is not None else None
    cpu["machine"] = (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1) * (os.cpu_count() or 1)
    results = gen.finish()
    rss = peak_rss_mb(api.process.pid)
    api.stop()
    summary = cli.parse_summary(api.log())

    timed = results["timed"]
    codes = Counter(s for _, s, _ in timed)
    accepted = codes.pop(202, 0)
    errors = {ERROR_NAMES.get(s, f"HTTP {s}"): n for s, n in sorted(codes.items())}
    latencies = sorted(ms for _, s, ms in timed if s == 202)
    shown = {**percentiles(latencies), "max": latencies[-1]} if latencies else {}
    cpu["load generator"] = results["cpu_seconds"] / results["seconds"] if results["seconds"] else None
    run = ApiRun(name, spec["mode"], spec.get("rate"), spec["connections"], len(timed), accepted,
               errors, results["seconds"], accepted / results["seconds"] if results["seconds"] else 0.0, shown,
               cpu, results["late_ms"], rss)

    # Every ride answered 202 (warm-up included) in ride_details once, and nothing else; api.py counted them.
    answered = [ride_id for ride_id, s in results["warm"] if s == 202] + [ride_id for ride_id, s, _ in timed
                                                                             if s == 202]
    if summary.get("accepted") != len(answered) or summary.get("replayed") != 0:
        raise BenchError(f"{name}: api.py's summary says accepted={summary.get('accepted')} "
                         f"replayed={summary.get('replayed')}, the generator had {len(answered)} 202s "
                         f"(errors: {_errors(run)})")
    keys = Counter(r.key.decode() for r in read_records(bootstrap, [prefix + topics.RIDE_DETAILS]))
    expected = Counter(answered)
    if keys != expected:
        missing = sum((expected - keys).values())
        extra = sum((keys - expected).values())
        raise BenchError(f"{name}: ride_details holds {sum(keys.values())} records for {len(answered)} rides "
                         f"answered 202: {missing} missing, {extra} not answered 202 or twice (errors: {_errors(run)})")
    run.answered = len(answered)
    run.reconciled = f"{len(answered):,} rides answered 202 (warm-up included), each in ride_details once, nothing else"
    return run


def machine(kafka_version: str, api_tree: Path) -> dict[str, str]:
    import kafka

    return {"api_tree": "" if api_tree.resolve() == PROJECT_ROOT else str(api_tree),
            "cores": str(os.cpu_count()), "platform": f"{platform.system()} {platform.machine()}",
            "python": platform.python_version(), "kafka_python": kafka.__version__, "kafka": kafka_version,
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()), "load_after": ""}


def bench(args: argparse.Namespace, bootstrap: str, kafka_version: str, broker_pid: int | None, work_dir: Path,
          procs: list) -> ApiReport:
    started = time.monotonic()
    report = ApiReport(machine(kafka_version, args.api_tree))
    run_id = f"bench-api-{os.getpid()}-{int(time.time())}"
    seeds = iter(range(args.seed * 1000, args.seed * 1000 + 100))

    def figure(name: str, tag: str, spec: dict) -> None:
        prefix = f"{run_id}-{tag}."
        progress(f"{name}: api.py on --topic-prefix {prefix}")
        run = api_run(name, args.api_tree, bootstrap, prefix, {"warm": args.warm, "seed": next(seeds), **spec},
                      work_dir, procs, broker_pid)
        report.runs.append(run)
        report.checks.append(f"{name}: {run.reconciled}")
        progress(f"{name}: {run.accepted_per_s:,.0f} accepted/s, latency ms {run.latency_ms}, errors {run.errors}")

    figure(f"saturation, {args.connections} connections", "saturation",
           {"mode": "closed", "connections": args.connections, "seconds": args.saturation_seconds,
            "count": int(args.saturation_seconds * MAX_RATE)})
    for rate in RATES:
        figure(f"{rate:,}/s for {args.seconds:g} s", f"rate{rate}",
               {"mode": "open", "rate": rate, "connections": OPEN_LOOP_CONNECTIONS, "seconds": args.seconds,
                "count": int(rate * args.seconds)})
    prefix = f"{run_id}-rides."
    progress(f"rides.py --count {args.rides:,} --seed {args.seed} --topic-prefix {prefix}")
    report.rides_py, _rss = run_rides(PROJECT_ROOT, bootstrap, prefix, args.rides, args.seed, work_dir, procs)
    report.rides_py_count = args.rides
    report.machine["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report.wall_seconds = time.monotonic() - started
    return report


# ------------------------------------------------------------------------------------ the report


def _ms(p: dict[str, float]) -> str:
    return " / ".join(f"{p[k]:.1f}" for k in ("p50", "p95", "p99", "max")) if p else "-"


def _cores(run: ApiRun) -> str:
    c = run.cpu_cores
    parts = [f"{name} {c[name]:.2f}" for name in ("api.py", "load generator", "broker", "machine")
             if c.get(name) is not None]
    return ", ".join(parts)


def _errors(run: ApiRun) -> str:
    return ", ".join(f"{n:,} {what}" for what, n in run.errors.items()) or "none"


def rows(report: ApiReport) -> list[tuple[str, str, str, str]]:
    """(figure, value, goal, met?) for the table."""
    out = []
    saturation = next(r for r in report.runs if r.mode == "closed")
    out.append((f"POST /rides at saturation ({saturation.connections} connections, {saturation.seconds:.0f} s)",
                f"{saturation.accepted_per_s:,.0f} accepted/s", f">= {GOAL_RATE:,.0f}/s",
                "yes" if saturation.accepted_per_s >= GOAL_RATE and not saturation.errors else "no"))
    out.append(("  its latency, ms p50 / p95 / p99 / max (closed loop)", _ms(saturation.latency_ms), "", ""))
    for run in report.runs:
        if run.mode != "open":
            continue
        goal = run.rate == GOAL_P99_AT
        met = run.latency_ms.get("p99", float("inf")) < GOAL_P99_MS and not run.errors
        out.append((f"POST /rides at {run.rate:,.0f}/s, ms p50 / p95 / p99 / max", _ms(run.latency_ms),
                    f"p99 < {GOAL_P99_MS:.0f}" if goal else "", ("yes" if met else "no") if goal else ""))
    out.append((f"rides.py produce rate ({report.rides_py_count:,} rides)",
                f"{report.rides_py:,.0f} rides/s" if report.rides_py else "-", "", ""))
    if report.rides_py:
        out.append(("  saturation / rides.py", f"{saturation.accepted_per_s / report.rides_py:.2f}", "", ""))
    total = sum(r.answered for r in report.runs)
    out.append(("every 202 in ride_details once, nothing else", f"{total:,} rides", "all", "yes"))
    return out


def format_table(report: ApiReport) -> str:
    m = report.machine
    lines = [
        "POST /rides benchmark: one api.py (FastAPI, uvicorn, uvloop, httptools), load from another process",
        f"machine: {m['cores']} cores, {m['platform']}, Python {m['python']}, kafka-python {m['kafka_python']}, "
        f"Kafka {m['kafka']}",
        f"load average (1 / 5 / 15 min): {m['load_before']} before, {m['load_after']} after; wall time "
        f"{report.wall_seconds:.0f} s",
        *([f"api.py from {m['api_tree']}"] if m["api_tree"] else []),
        "",
    ]
    table = [("figure", "value", "goal", "met?"), *rows(report)]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for r in table:
        lines.append(f"{r[0]:{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:{widths[2]}}  {r[3]}".rstrip())
    lines += ["", "each run: requests, errors, CPU in cores while timed (api.py, load generator, broker, machine)"]
    for run in report.runs:
        late = f"; dispatcher at most {run.late_ms:.1f} ms late" if run.mode == "open" else ""
        rss = f"; api.py peak RSS {run.api_peak_rss_mb:.0f} MB" if run.api_peak_rss_mb else ""
        lines.append(f"  {run.name}: {run.requests:,} requests in {run.seconds:.1f} s, {run.accepted:,} accepted "
                     f"({run.accepted_per_s:,.0f}/s), errors: {_errors(run)}; CPU {_cores(run)}{late}{rss}")
    lines.append("")
    lines.extend(f"check: {c}" for c in report.checks)
    return "\n".join(lines)


def to_json(report: ApiReport) -> str:
    data = asdict(report)
    data["table"] = [dict(zip(("figure", "value", "goal", "met"), r, strict=True)) for r in rows(report)]
    return json.dumps(data, indent=2)


# ------------------------------------------------------------------------------------ the script


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=SECONDS, help="each fixed-rate run's length")
    p.add_argument("--saturation-seconds", type=float, default=SATURATION_SECONDS, help="the saturation run's length")
    p.add_argument("--connections", type=int, default=CONNECTIONS, help="saturation's concurrent connections")
    p.add_argument("--rides", type=int, default=DEFAULT_RIDES, metavar="N", help="rides.py --count")
    p.add_argument("--warm", type=int, default=WARM_REQUESTS, metavar="N",
                   help="untimed requests to each api.py before its run")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="rides.py --seed, and the bodies' seeds")
    p.add_argument("--bootstrap-servers", metavar="HOST:PORT",
                   help="use this cluster instead of starting a local broker (default: start one)")
    p.add_argument("--api-tree", type=Path, default=PROJECT_ROOT, metavar="DIR",
                   help="run the api.py of this checkout (a `git worktree` of another revision, say), with it as its "
                        "working directory and PYTHONPATH; rides.py and the generator stay this tree's")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    p.add_argument("--quick", action="store_true", help="a few seconds per figure: checks the table is produced (CI)")
    p.add_argument("--generate", metavar="SPEC", help=argparse.SUPPRESS)  # the load generator's own process
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.saturation_seconds = QUICK["seconds"], QUICK["saturation_seconds"]
        args.rides, args.warm = QUICK["rides"], QUICK["warm"]
    if args.seconds <= 0 or args.saturation_seconds <= 0 or args.connections < 1 or args.rides < 1 or args.warm < 1:
        p.error("--seconds, --saturation-seconds, --connections, --rides and --warm must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.generate:
        return generator_main(args.generate)

    def run(bootstrap: str, kafka_version: str, broker_pids: list[int], work_dir: Path, procs: list) -> ApiReport:
        return bench(args, bootstrap, kafka_version, broker_pids[0] if broker_pids else None, work_dir, procs)

    return on_a_broker(args.bootstrap_servers, "bench-api-", run, to_json if args.json else format_table)


if __name__ == "__main__":
    sys.exit(main())
