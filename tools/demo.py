"""`make demo`: get a Kafka broker, run a few hundred rides through the pipeline's scripts, stop everything.

Where the broker comes from, first match wins:
1. --bootstrap-servers: that cluster, nothing is started (a secured one: the RIDES_SECURITY_PROTOCOL, RIDES_SASL_*
   and RIDES_SSL_* variables the scripts read say how to log in, for the demo's own clients too);
2. one already answers on localhost:9092 (`docker compose up -d`, `python -m tools.broker`): use it, leave it;
3. a Docker engine answers: `docker compose up -d --wait` here, `docker compose down` at the end;
4. otherwise the local launcher (tools.broker) on port 9092 (any free port if taken), in a temporary
   data folder that is deleted at the end.

Then transaction.py, email.py, analysis.py and api.py start (the live page's URL is printed), rides.py produces
--rides rides, a few more are requested over HTTP through api.py (one of them twice, with the same
Idempotency-Key), and the demo waits until every acknowledged ride is decided (confirmed or rejected), emailed
and analysed. With --keep S everything keeps running S seconds longer, to look at the page. It stops the
scripts with SIGTERM, checks that each exited 0, and reconciles their `summary:` lines. Every run has
its own topic prefix, consumer groups, outbox and analysis state, so reruns against a long-lived broker
start clean; the run folder (with the .eml files) is kept and its path printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# `python tools/demo.py` puts tools/ on the path, not the project. Appended, not prepended: the project's
# email.py must not shadow the standard library's `email` package in this process.
sys.path.append(str(PROJECT_ROOT))

from kafka.errors import KafkaError  # noqa: E402

from common import cli, clients  # noqa: E402
from common.settings import Settings  # noqa: E402
from common.stats import load_state  # noqa: E402
from tools.broker import BrokerError, LocalBroker, metadata_ok, port_is_free, wait_until_ready  # noqa: E402

DEFAULT_HOST, DEFAULT_PORT = "localhost", 9092
CONSUMERS = ("transaction", "email", "analysis")
SERVICES = (*CONSUMERS, "api")  # what runs until the demo stops it
API_RIDES = 5  # rides requested over HTTP, through api.py
API_URL = re.compile(r"serving on (http://\S+)")
STOP_TIMEOUT = 15.0  # the scripts promise 10 s (docs/architecture.md); a little slack for a busy 2-core machine
SETTLE_TIMEOUT = 180.0  # from rides.py's exit until every ride is decided, emailed and analysed

_print_lock = threading.Lock()
_COLOURS = {"demo": "1", "rides": "36", "transaction": "33", "email": "35", "analysis": "32", "api": "34"}
_WIDTH = max(len(name) for name in _COLOURS) + 2  # "[transaction]"


def emit(name: str, line: str) -> None:
    """One output line, prefixed with where it came from (coloured only on a terminal)."""
    prefix = f"[{name}]".ljust(_WIDTH)
    if sys.stdout.isatty():
        prefix = f"\033[{_COLOURS.get(name, '0')}m{prefix}\033[0m"
    with _print_lock:
        print(f"{prefix} {line}", flush=True)


def say(message: str) -> None:
    emit("demo", message)


class Failed(Exception):
    """The demo did not reconcile or a script misbehaved; the message is the one-line reason."""


class Stop(BaseException):
    """Ctrl-C or SIGTERM to the demo: unwind so that the cleanup stops everything the demo started."""


def _on_stop_signal(signum, frame):
    # Once only: a second Ctrl-C must not cut the cleanup short and leave a script or the broker running.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: say("already stopping everything the demo started; a moment"))
    raise Stop()


# ------------------------------------------------------------------------------------------ broker


def _something_listens(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _compose_command() -> list[str] | None:
    """`docker compose` (or the old `docker-compose`) when a Docker engine answers, else None."""
    if shutil.which("docker") is None:
        return None
    try:
        if subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode != 0:
            return None  # a CLI without an engine (or without permission to reach it)
        if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20).returncode == 0:
            return ["docker", "compose"]
    except (OSError, subprocess.TimeoutExpired):
        return None
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    say("a Docker engine answers, but neither `docker compose` nor `docker-compose` is installed")
    return None


def kafka_settings() -> Settings:
    """How the demo's own clients reach Kafka: the same RIDES_SECURITY_PROTOCOL, RIDES_SASL_* and RIDES_SSL_*
    variables (and .env) the scripts read, so that the cluster may be a secured one. Read from the project root,
    where the scripts run (they inherit the demo's environment)."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as e:
        error = e.errors()[0]
        where = "_".join(str(part) for part in error["loc"]).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        raise BrokerError(f"RIDES_{where} in the environment: {message}" if where else
                          f"the RIDES_* variables in the environment: {message}") from None


def acquire_broker(stack: contextlib.ExitStack, bootstrap: str | None, settings: Settings) -> str:
    """Bootstrap servers of a ready broker, reached as `settings` say (TLS, a login); whatever this starts,
    `stack` stops."""
    options = clients.security(settings)

    def answering(at: str, otherwise: str) -> str:
        """`at`, once Kafka answers there as the settings say; else a BrokerError naming what waiting will not
        mend (clients.diagnose: a login refused, a CA not trusted, TLS expected), or `otherwise`."""
        if not metadata_ok(at, timeout_ms=10000, client_options=options):
            raise BrokerError(clients.diagnose(settings.model_copy(update={"bootstrap_servers": at})) or otherwise)
        return at

    if bootstrap:
        answering(bootstrap, f"no Kafka answers at {bootstrap} (--bootstrap-servers). Fix: start it, or drop the "
                             "flag to let the demo start one")
        say(f"using the broker at {bootstrap} (--bootstrap-servers)")
        return bootstrap

    if _something_listens(DEFAULT_HOST, DEFAULT_PORT):
        bootstrap = answering(f"{DEFAULT_HOST}:{DEFAULT_PORT}", (
            f"something listens on {DEFAULT_HOST}:{DEFAULT_PORT} but does not answer as Kafka. "
            "Fix: stop it, or start Kafka there (`docker compose up -d` or `python -m tools.broker`)"))
        say(f"using the broker already running at {bootstrap} (left running)")
        return bootstrap

    if options["security_protocol"] != "PLAINTEXT":
        raise BrokerError(f"RIDES_SECURITY_PROTOCOL is {options['security_protocol']}, but a broker the demo starts "
                          f"speaks PLAINTEXT. Fix: pass --bootstrap-servers (the secured cluster), or unset it")
    compose = _compose_command()
    if compose:
        say("starting Kafka with docker compose (stopped again at the end)")
        stack.callback(_compose_down, compose)
        subprocess.run([*compose, "up", "-d", "--wait"], cwd=PROJECT_ROOT, check=True)
        bootstrap = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
        _wait_until_ready(bootstrap, timeout=120)
        return bootstrap

    broker = LocalBroker()  # a fresh temporary data dir, deleted by cleanup()
    stack.callback(_stop_local_broker, broker)
    port = DEFAULT_PORT if port_is_free(DEFAULT_PORT) else 0
    say(f"no broker on {DEFAULT_HOST}:{DEFAULT_PORT} and no Docker engine: starting Kafka from its jars "
        "(tools.broker; stopped again at the end)")
    started = time.monotonic()
    bootstrap = broker.start(port=port)
    say(f"Kafka ready at {bootstrap} in {time.monotonic() - started:.1f} s (pid {broker.pid}, log {broker.log_file})")
    return bootstrap


def _stop_local_broker(broker: LocalBroker) -> None:
    if broker.is_running():
        say(f"stopping Kafka (pid {broker.pid})")
    broker.cleanup()


def _compose_down(compose: list[str]) -> None:
    say("stopping docker compose")
    subprocess.run([*compose, "down"], cwd=PROJECT_ROOT, check=False)


def _wait_until_ready(bootstrap: str, timeout: float) -> None:
    if not wait_until_ready(bootstrap, timeout, interval=1.0):
        raise BrokerError(f"Kafka at {bootstrap} not ready after {timeout:.0f} s. Fix: `docker compose logs`")


# ----------------------------------------------------------------------------------------- scripts


class Scripts:
    """The pipeline's scripts as subprocesses, their stdout and stderr merged and prefixed with their name."""

    def __init__(self, bootstrap_servers: str, topic_prefix: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic_prefix = topic_prefix
        self.procs: dict[str, subprocess.Popen] = {}
        self.summaries: dict[str, dict[str, int | float | str]] = {}
        self.last_line: dict[str, str] = {}
        self.metrics: dict[str, str] = {}  # script -> the base URL of its /metrics and /healthz
        self._pumps: dict[str, threading.Thread] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """Start `python <name>.py --bootstrap-servers ... --topic-prefix ... --metrics-port 0 *args` from the
        project root (each serves its metrics on a free port of 127.0.0.1, and logs where)."""
        argv = [f"{name}.py", "--bootstrap-servers", self.bootstrap_servers, "--topic-prefix", self.topic_prefix,
                "--metrics-port", "0", *args]
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one stream per script, so its lines stay in order
            # Out of the terminal's process group: Ctrl-C reaches the demo only, which then sends each
            # script one SIGTERM (a second signal would make a script exit without its final commit).
            start_new_session=True,
            text=True,
            errors="replace",
            bufsize=1,
        )
        self.procs[name] = proc
        say(f"started {name}.py, pid {proc.pid}: python {' '.join(argv)}")
        pump = threading.Thread(target=self._pump, args=(name, proc), daemon=True)
        pump.start()
        self._pumps[name] = pump
        return proc

    def _pump(self, name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None  # started with stdout=PIPE
        for raw in proc.stdout:
            line = raw.rstrip()
            self.last_line[name] = line
            if "summary: " in line:
                self.summaries[name] = cli.parse_summary(line)
            if m := METRICS_LINE.search(line):
                self.metrics[name] = m[1]
            if m := API_URL.search(line):
                self.metrics.setdefault("api-url", m[1])
            emit(name, line)

    def finish(self, name: str, timeout: float) -> int:
        """Exit code of a script that exits by itself; its output is fully read once this returns."""
        code = self.procs[name].wait(timeout)
        self._pumps[name].join(5)
        return code

    def stop(self, names: tuple[str, ...], timeout: float = STOP_TIMEOUT) -> dict[str, int]:
        """SIGTERM these scripts (they flush, commit and exit 0); SIGKILL the ones that hang."""
        for name in names:
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGTERM)
        codes = {}
        for name in names:
            proc = self.procs[name]
            try:
                codes[name] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"{name}.py (pid {proc.pid}) did not stop within {timeout:.0f} s of SIGTERM; killing it")
                proc.kill()
                codes[name] = proc.wait()
            self._pumps[name].join(5)
        return codes

    def stop_all(self) -> None:
        """Whatever is still running (an error or Ctrl-C cut the demo short) is stopped, by pid."""
        running = tuple(name for name, proc in self.procs.items() if proc.poll() is None)
        if running:
            say(f"stopping {', '.join(f'{n}.py' for n in running)}")
            self.stop(running)

    def check_running(self, names: tuple[str, ...]) -> None:
        for name in names:
            code = self.procs[name].poll()
            if code is not None:
                raise Failed(f"{name}.py exited early with code {code}: {self.last_line.get(name, '(no output)')}")


# ----------------------------------------------------------------------------------------- progress


class Progress:
    """How far the rides got, seen from outside the scripts: the topics, the outbox and analysis' state."""

    def __init__(self, bootstrap: str, topic_prefix: str, outbox: Path, state: Path, options: dict[str, Any]) -> None:
        from kafka import KafkaConsumer

        from common import topics

        self.outbox, self.state = outbox, state
        self.topics = [topic_prefix + topics.RIDE_CONFIRMED, topic_prefix + topics.RIDE_REJECTED]
        self.decided: dict[str, set[bytes]] = {t: set() for t in self.topics}
        # A reader, not a member of the pipeline: no group, no commits, every partition from the start.
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            **options,  # TLS and the SASL login, as the scripts have them
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",  # what email.py and analysis.py see: no aborted transactions
        )
        self._assigned = False

    def _assign(self) -> bool:
        from kafka import TopicPartition

        partitions = []
        for topic in self.topics:
            numbers = self.consumer.partitions_for_topic(topic)
            if not numbers:
                return False  # the scripts create the topics at start; not yet
            partitions += [TopicPartition(topic, p) for p in numbers]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning()
        self._assigned = True
        return True

    def poll(self) -> None:
        if not self._assigned and not self._assign():
            time.sleep(0.5)
            return
        for tp, records in self.consumer.poll(timeout_ms=500).items():
            self.decided[tp.topic].update(r.key for r in records)

    @property
    def confirmed(self) -> int:
        return len(self.decided[self.topics[0]])

    @property
    def rejected(self) -> int:
        return len(self.decided[self.topics[1]])

    def emailed(self) -> int:
        return sum(1 for _ in self.outbox.glob("*.eml")) if self.outbox.is_dir() else 0

    def analysed(self) -> int:
        import sqlite3


        if not self.state.exists():
            return 0
        try:
            return load_state(self.state)[0].all.rides
        except sqlite3.Error:
            return 0  # being created right now

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def wait_until_settled(scripts: Scripts, progress: Progress, acknowledged: int, timeout: float) -> None:
    """Until every acknowledged ride is confirmed or rejected, and every confirmed one emailed and analysed."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        scripts.check_running(CONSUMERS)
        progress.poll()
        decided, confirmed = progress.confirmed + progress.rejected, progress.confirmed
        emailed, analysed = progress.emailed(), progress.analysed()
        if decided >= acknowledged and emailed >= confirmed and analysed >= confirmed:
            say(f"all {acknowledged} rides decided ({confirmed} confirmed, {progress.rejected} rejected), "
                f"{emailed} emailed, {analysed} analysed")
            return
        if time.monotonic() > deadline:
            raise Failed(f"not settled after {timeout:.0f} s: {decided} of {acknowledged} rides decided, "
                         f"{emailed} of {confirmed} confirmed emailed, {analysed} analysed")
        if time.monotonic() - last_report >= 5:
            last_report = time.monotonic()
            say(f"waiting: {decided} of {acknowledged} rides decided, {emailed} of {confirmed} confirmed emailed, "
                f"{analysed} analysed")


# ----------------------------------------------------------------------------------------- the demo


def _number(summaries: dict[str, dict[str, int | float | str]], script: str, key: str) -> int:
    try:
        return int(summaries[script][key])
    except (KeyError, ValueError):
        raise Failed(f"{script}.py printed no 'summary: ... {key}=N' line") from None


METRICS_LINE = re.compile(r"metrics on (http://\S+)/metrics")


def health(url: str) -> str:
    """GET <url>/healthz: "200 ok: ..." or "503 stuck: ...", or why it could not be asked."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            return f"{response.status} {response.read().decode().strip()}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode().strip()}"
    except OSError as e:
        return f"unreachable ({e})"


def api_url(scripts: Scripts, timeout: float = 60.0) -> str:
    """The URL api.py serves, once it says it is ready."""
    deadline = time.monotonic() + timeout
    while "api-url" not in scripts.metrics:
        scripts.check_running(("api",))
        if time.monotonic() > deadline:
            raise Failed(f"api.py did not say where it serves within {timeout:.0f} s")
        time.sleep(0.1)
    return scripts.metrics["api-url"]


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """One JSON request to api.py: (status, body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (OSError, ValueError) as e:
        raise Failed(f"{method} {url}: {e}") from None


# A few riders of the demo's own, at Manhattan landmarks (and one in Jersey City, which is refused).
API_TRIPS = (
    ("Grand Central", (40.7527, -73.9772), "The Met", (40.7794, -73.9632)),
    ("Times Square", (40.7580, -73.9855), "Wall Street", (40.7069, -74.0113)),
    ("Washington Square Park", (40.7308, -73.9973), "Columbia University", (40.8075, -73.9626)),
    ("Jersey City", (40.7178, -74.0431), "Chelsea Market", (40.7420, -74.0048)),
    ("Apollo Theater", (40.8100, -73.9501), "Central Park Zoo", (40.7678, -73.9718)),
)


def request_over_http(url: str, run_id: str) -> list[str]:
    """Request API_RIDES rides through api.py (the first twice, with the same Idempotency-Key: one ride); their ids."""
    ride_ids = []
    for n, (start, (lat1, lon1), end, (lat2, lon2)) in enumerate(API_TRIPS[:API_RIDES]):
        body = {"customer_id": f"demo-{n}", "customer_email": f"rider{n}@example.com",
                "customer_name": f"Demo Rider {n}", "pickup": {"lat": lat1, "lon": lon1},
                "dropoff": {"lat": lat2, "lon": lon2}, "passengers": 1}
        key = {"Idempotency-Key": f"{run_id}-{n}"}
        status, answer = http("POST", f"{url}/rides", body, key)
        if status != 202:
            raise Failed(f"POST /rides answered {status}: {answer.get('detail', answer)}")
        say(f"POST {url}/rides ({start} -> {end}): {status} ride {answer['ride_id']}")
        if n == 0:  # a retry, as a client whose connection dropped would send: the same ride, nothing new
            status, again = http("POST", f"{url}/rides", body, key)
            say(f"POST again with the same Idempotency-Key: {status} ride {again.get('ride_id')} (the same ride)")
        ride_ids.append(answer["ride_id"])
    return ride_ids


def run_pipeline(scripts: Scripts, bootstrap: str, options: dict[str, Any], run_dir: Path, rides: int, rate: float,
                 keep: float) -> None:
    """Start the consumers and the API, produce the rides, wait until everything is done, stop, reconcile."""
    outbox, state = run_dir / "outbox", run_dir / "analysis.db"
    tag = scripts.topic_prefix  # also the consumer groups' prefix: a reused broker knows none of them
    scripts.start("transaction", "--group-id", f"{tag}transaction")
    scripts.start("email", "--group-id", f"{tag}email", "--outbox", str(outbox))
    scripts.start("analysis", "--group-id", f"{tag}analysis", "--state", str(state), "--every", "2")
    scripts.start("api", "--port", "0", "--groups", ",".join(f"{tag}{name}" for name in CONSUMERS))
    url = api_url(scripts)
    say(f"the live page: {url}/  (rides over HTTP: POST {url}/rides, GET {url}/rides/<ride_id>; {url}/stats)")
    scripts.start("rides", "--count", str(rides), "--rate", f"{rate:g}")
    via_api = request_over_http(url, tag.strip("."))

    try:
        code = scripts.finish("rides", timeout=rides / rate + 120 if rate else 300)
    except subprocess.TimeoutExpired:
        raise Failed(f"rides.py did not finish {rides} rides in time") from None
    if code != 0:
        raise Failed(f"rides.py exited with code {code}: {scripts.last_line.get('rides', '(no output)')}")
    acknowledged = _number(scripts.summaries, "rides", "acknowledged")

    progress = Progress(bootstrap, scripts.topic_prefix, outbox, state, options)
    try:
        wait_until_settled(scripts, progress, acknowledged + len(via_api), SETTLE_TIMEOUT)
    finally:
        progress.close()
    for ride_id in via_api:
        status, ride = http("GET", f"{url}/rides/{ride_id}")
        outcome = (f"{ride.get('driver_id')}, ETA {ride.get('pickup_eta_minutes')} min, {ride.get('fare')} "
                   f"{ride.get('currency')}" if ride.get("status") == "confirmed" else ride.get("reason"))
        say(f"GET /rides/{ride_id}: {status} {ride.get('status', ride.get('detail'))} ({outcome})")
    for name in CONSUMERS:
        metrics = scripts.metrics.get(name)
        say(f"{name}.py: metrics at {metrics}/metrics, health {health(metrics)}" if metrics else
            f"{name}.py: no metrics URL")
    if keep:
        say(f"everything keeps running for {keep:g} s (--keep): open {url}/ to watch; Ctrl-C stops it all now")
        time.sleep(keep)

    say("stopping the consumers and the API with SIGTERM")
    codes = scripts.stop(SERVICES)
    bad = {name: code for name, code in codes.items() if code != 0}
    if bad:
        raise Failed("after SIGTERM: " + ", ".join(f"{name}.py exited {code}" for name, code in bad.items()))

    requested = _number(scripts.summaries, "rides", "requested")
    confirmed = _number(scripts.summaries, "transaction", "confirmed")
    rejected = _number(scripts.summaries, "transaction", "rejected")
    emailed = _number(scripts.summaries, "email", "emailed")
    analysed = _number(scripts.summaries, "analysis", "total")
    accepted, replayed = _number(scripts.summaries, "api", "accepted"), _number(scripts.summaries, "api", "replayed")
    say(f"summary: requested={requested} acknowledged={acknowledged} via_api={accepted} confirmed={confirmed} "
        f"rejected={rejected} emailed={emailed} analysed={analysed}")
    if (accepted, replayed) != (len(via_api), 1):
        raise Failed(f"api.py accepted {accepted} rides and replayed {replayed}: expected {len(via_api)} and 1")
    if confirmed + rejected != acknowledged + accepted:
        raise Failed(f"confirmed + rejected = {confirmed + rejected}, but {acknowledged} rides were acknowledged "
                     f"and {accepted} accepted over HTTP")
    if emailed != confirmed:
        raise Failed(f"{emailed} emails for {confirmed} confirmed rides")
    if analysed != confirmed:
        raise Failed(f"analysis counted {analysed} rides, but {confirmed} were confirmed")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/demo.py", description=__doc__.split("\n\n")[0].replace("`", ""))
    p.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]",
                   help="use this Kafka cluster and start no broker (default: localhost:9092 if it answers, "
                        "else one the demo starts)")
    p.add_argument("--rides", type=int, default=200, metavar="N", help="rides to produce (default: 200)")
    p.add_argument("--rate", type=float, default=40, metavar="R", help="rides per second (default: 40)")
    p.add_argument("--keep", type=float, default=0, metavar="S",
                   help="keep everything running S seconds once the rides are through, to watch the live page")
    args = p.parse_args(argv)
    if args.rides < 1:
        p.error("--rides must be at least 1")
    if args.rate < 0:
        p.error("--rate must not be negative")
    if args.keep < 0:
        p.error("--keep must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # Explicit for SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_stop_signal)
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    topic_prefix = f"demo-{run_id}."
    run_dir = None
    try:
        with contextlib.ExitStack() as stack:
            os.chdir(PROJECT_ROOT)  # where the scripts run: the same .env, the same relative certificate paths
            settings = kafka_settings()
            options = clients.security(settings)
            bootstrap = acquire_broker(stack, args.bootstrap_servers, settings)
            run_dir = Path(tempfile.mkdtemp(prefix=f"rides-demo-{run_id}-"))  # kept: the emails are in it
            say(f"run {run_id}: topics and consumer groups prefixed {topic_prefix!r}; outbox {run_dir / 'outbox'}")
            scripts = Scripts(bootstrap, topic_prefix)
            stack.callback(scripts.stop_all)  # runs before the broker stops: scripts first
            run_pipeline(scripts, bootstrap, options, run_dir, args.rides, args.rate, args.keep)
    except Failed as e:
        print(f"demo: FAILED: {e}", file=sys.stderr, flush=True)
        say(f"emails so far in {run_dir}/outbox; everything the demo started is stopped")
        return 1
    except BrokerError as e:
        print(f"demo: error: {e}", file=sys.stderr, flush=True)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"demo: error: `{' '.join(e.cmd)}` failed (exit {e.returncode})", file=sys.stderr, flush=True)
        return 1
    except KafkaError as e:  # the demo's own look at the topics; the scripts report their errors themselves
        print(f"demo: error: reading the topics failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    except Stop:
        say("interrupted; everything the demo started is stopped")
        return 130
    say(f"OK in {time.monotonic() - started:.0f} s; everything the demo started is stopped. "
        f"The emails are in {run_dir / 'outbox'} (open any .eml); delete {run_dir} when done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
