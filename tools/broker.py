"""A real Apache Kafka broker (KRaft, one combined broker+controller node) for development and tests.

    python -m tools.broker [--port 9092] [--data-dir .kafka/data] [--fresh]
    python -m tools.broker --nodes 3 [--port 19092] [--data-dir .kafka/cluster] [--fresh]   (tools/cluster.py)
    python -m tools.broker --secure [...]   clients must use TLS and log in (SASL_SSL; see tools/tls.py)

or, from Python:

    with LocalBroker(data_dir=tmp) as broker:
        bootstrap = broker.start(port=0)      # "127.0.0.1:PORT", once a client can connect
        broker.restart()                      # same data, same ports

    with LocalBroker(data_dir=tmp, secure=True) as broker:   # SASL_SSL: a throwaway CA, the SCRAM user `rides`
        bootstrap = broker.start(port=0)
        broker.client_options()   # kafka-python's settings for it; broker.script_env(): the scripts' RIDES_*

The jars come from KAFKA_HOME/libs (an unpacked Kafka distribution) when KAFKA_HOME is set, else they are
resolved once with Maven (tools/kafka-runtime.pom.xml) into the git-ignored .cache/ and reused.
The JVM runs in its own process group, watched by a tiny watchdog process that stops it if this Python
process dies without calling stop() (a killed test run must not leave a broker behind).
One launcher per data dir: it holds a flock on the folder (shared with its JVM) from start() to stop(),
and a second launcher on the same folder refuses in one line before touching anything in it.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tools import tls

# 4.4.0 is the newest release on Maven Central, but its POM references
# org.apache.kafka:kafka-tools-api:4.4.0, which is not published there (404), so 4.4.0 does not resolve;
# 4.3.1 is the newest release that does. docker-compose.yml uses the same version (a unit test checks).
KAFKA_VERSION = "4.3.1"
MIN_JAVA = 17  # Kafka 4.x brokers need Java 17.
HEAP = "512m"  # Plenty for a development broker, and leaves room on a 2-core CI machine.

PROJECT_ROOT = Path(__file__).resolve().parent.parent
POM = Path(__file__).resolve().with_name("kafka-runtime.pom.xml")
CACHE_DIR = PROJECT_ROOT / ".cache" / f"kafka-{KAFKA_VERSION}"
DEFAULT_DATA_DIR = PROJECT_ROOT / ".kafka" / "data"
DEFAULT_PORT = 9092
# A cluster (--nodes N, tools/cluster.py): nodes on 19092, 19093, ... (docker-compose.yml's profile `cluster`
# publishes the same three), beside a single broker on 9092; each node's data in a folder of this one.
MAX_NODES = 5
DEFAULT_CLUSTER_PORT = 19092
DEFAULT_CLUSTER_DIR = PROJECT_ROOT / ".kafka" / "cluster"

# Written after the jars were copied completely; its absence means "resolve again".
_MARKER = ".resolved"
# The launcher's own state in the data dir: ports and cluster id, so a restart gets the same address.
_STATE = "launcher.json"
# A cluster's state (tools.cluster), in the folder above its nodes' data dirs; a single node refuses that folder.
CLUSTER_STATE = "cluster.json"
# Written to the broker log before each start, so an error quotes only that run's lines.
_BANNER = "===== tools.broker: starting"

log = logging.getLogger(__name__)


class BrokerError(Exception):
    """A failure the user can fix; its message is one line that says how."""


# --------------------------------------------------------------------------------------------- Java


def find_java(java_home: str | None = None) -> str:
    """The java executable, like Kafka's own scripts: JAVA_HOME/bin/java if set, else java on PATH."""
    java_home = os.environ.get("JAVA_HOME") if java_home is None else java_home
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            f"no Java found (not on PATH, JAVA_HOME not set); Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+. "
            f"Fix: install a JDK {MIN_JAVA} or newer (e.g. `apt-get install openjdk-17-jdk-headless`) "
            "and put it on PATH or set JAVA_HOME"
        )
    return java


def java_major_version(java: str) -> int:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise BrokerError(f"cannot run {java}: {e}. Fix: install a JDK {MIN_JAVA}+ and put it on PATH") from e
    text = out.stderr + out.stdout
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not m:
        first = text.strip().splitlines()[0] if text.strip() else "no output"
        raise BrokerError(
            f"cannot tell the version of {java} (`java -version` said: {first}). "
            f"Fix: install a JDK {MIN_JAVA}+ and put it on PATH or set JAVA_HOME"
        )
    major = int(m.group(1))
    if major == 1 and m.group(2):  # "1.8.0_392" is Java 8
        major = int(m.group(2))
    return major


def check_java(java_home: str | None = None) -> str:
    java = find_java(java_home)
    major = java_major_version(java)
    if major < MIN_JAVA:
        raise BrokerError(
            f"Java {major} found at {java}, but Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+. "
            f"Fix: install a JDK {MIN_JAVA} or newer and put it first on PATH or set JAVA_HOME to it"
        )
    return java


# ---------------------------------------------------------------------------------------------- jars


def resolve_libs(kafka_home: str | None = None, cache_dir: Path = CACHE_DIR) -> Path:
    """The folder of Kafka's jars: KAFKA_HOME/libs, or the Maven-resolved cache (resolved once)."""
    kafka_home = os.environ.get("KAFKA_HOME") if kafka_home is None else kafka_home
    if kafka_home:
        libs = Path(kafka_home) / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(
                f"KAFKA_HOME={kafka_home} has no libs/kafka_2.13-*.jar. Fix: point KAFKA_HOME at an unpacked "
                f"Apache Kafka {KAFKA_VERSION} distribution, or unset it to resolve the jars with Maven"
            )
        if not (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            found = sorted(p.name for p in libs.glob("kafka_2.13-*.jar"))
            log.warning("KAFKA_HOME has %s; this project pins and tests Kafka %s", found, KAFKA_VERSION)
        return libs

    libs = cache_dir / "libs"
    if (cache_dir / _MARKER).is_file():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "neither Maven nor KAFKA_HOME: cannot get the Kafka jars. Fix: install Maven (e.g. "
            f"`apt-get install maven`) or set KAFKA_HOME to an unpacked Kafka {KAFKA_VERSION} distribution"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A lock, so two launchers started at once (a test run and a demo) don't copy into each other.
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (cache_dir / _MARKER).is_file():
            return libs
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=cache_dir))
        cmd = [
            mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(POM), f"-Dkafka.version={KAFKA_VERSION}",
            "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        log.info("resolving the Kafka %s jars with Maven into %s (once)", KAFKA_VERSION, libs)
        started = time.monotonic()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=cache_dir)
        if out.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            raise BrokerError(
                f"Maven could not resolve the Kafka {KAFKA_VERSION} jars (offline?): {_maven_error(out)}. "
                "Fix: run once with network access to Maven Central (the jars are cached in .cache/ after), "
                f"or set KAFKA_HOME to an unpacked Kafka {KAFKA_VERSION} distribution"
            )
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        (cache_dir / _MARKER).write_text(f"{KAFKA_VERSION}\n")
        log.info("resolved %d jars in %.1f s", len(list(libs.glob("*.jar"))), time.monotonic() - started)
    return libs


def _maven_error(out: subprocess.CompletedProcess) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # Maven 3.8 colours even with -B
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("[ERROR]") and len(ln) > 8]
    text = errors[0] if errors else (lines[-1] if lines else f"mvn exited {out.returncode}")
    return _shorten(text.removeprefix("[ERROR]").strip(), 300)


# --------------------------------------------------------------------------------------------- ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        # The JVM binds with SO_REUSEADDR too: a port with only TIME_WAIT leftovers is free for it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def lock_dir(path: Path) -> int:
    """flock() the folder itself (created if missing), without waiting; returns the descriptor, whose close
    releases it. BrokerError in one line if another launcher holds it."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise BrokerError(
            f"the data dir {path} is in use by another tools.broker (or its broker is still "
            "stopping). Fix: stop that one first (its Ctrl-C), or pass another --data-dir"
        ) from None
    return fd


def empty_dir(path: Path) -> None:
    """Delete what the folder holds, but keep the folder (a lock may be on it)."""
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# ------------------------------------------------------------------------------------------ settings


def replication_properties(brokers: int) -> dict[str, str]:
    """What replication means on a cluster of `brokers` nodes: min(3, brokers) copies of every topic that
    asks for the broker's default (replication factor -1), internal topics too (committed offsets,
    transaction state); and, from three brokers, acks=all waits for two of them (min.insync.replicas 2),
    so one node can go without stopping producers or losing an acknowledged record."""
    replicas = min(3, max(1, brokers))
    min_isr = 2 if brokers >= 3 else 1
    return {
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_isr),
    }


def quorum_voters(voters: dict[int, int]) -> str:
    """controller.quorum.voters for controllers on 127.0.0.1: "1@127.0.0.1:PORT,2@127.0.0.1:PORT,..."."""
    return ",".join(f"{node}@127.0.0.1:{port}" for node, port in sorted(voters.items()))


# ------------------------------------------------------------------------------------------- watchdog

# Runs as a separate process whose stdin is a pipe from the launcher. It blocks reading it; if the
# launcher dies (even by SIGKILL) the pipe closes, the read returns without "stopped", and the watchdog
# stops the broker's process group: SIGTERM, then SIGKILL after a grace period.
_WATCHDOG = r"""
import os, signal, sys, time
pgid, grace = int(sys.argv[1]), float(sys.argv[2])
if sys.stdin.buffer.read().strip() == b"stopped":
    sys.exit(0)
try:
    os.killpg(pgid, signal.SIGTERM)
except ProcessLookupError:
    sys.exit(0)
deadline = time.monotonic() + grace
while time.monotonic() < deadline:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        sys.exit(0)
    time.sleep(0.2)
try:
    os.killpg(pgid, signal.SIGKILL)
except ProcessLookupError:
    pass
"""


# -------------------------------------------------------------------------------------------- broker


class LocalBroker:
    """One Kafka node (broker + controller) in a JVM this object starts, watches and stops."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        log_file: str | Path | None = None,
        kafka_home: str | None = None,
        java_home: str | None = None,
        cache_dir: str | Path = CACHE_DIR,
        ready_timeout: float = 90.0,
        stop_timeout: float = 30.0,
        *,
        node_id: int = 1,
        voters: dict[int, int] | None = None,
        cluster_id: str | None = None,
        heap: str = HEAP,
        secure: bool = False,
    ) -> None:
        """One node alone by default. A node of a cluster (tools.cluster) gets its node_id, the static
        controller quorum as `voters` ({node id: controller port}, all on 127.0.0.1, this node's included)
        and the cluster's id; its replication settings follow the quorum's size.

        secure=True (one node only): clients must speak TLS and log in (SASL_SSL, see _secure_properties);
        the CA's certificate, the user and its password file are then ca_file, username and password_file."""
        if secure and voters is not None:
            raise ValueError("secure=True is for a single node")
        if voters is not None and node_id not in voters:
            raise ValueError(f"node {node_id} is not one of the voters {sorted(voters)}")
        self._tmp: tempfile.TemporaryDirectory | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kafka-broker-")
            data_dir = Path(self._tmp.name) / "data"
        self.data_dir = Path(data_dir).resolve()
        self.log_file = Path(log_file).resolve() if log_file else self.data_dir.parent / "broker.log"
        self.kafka_home = kafka_home
        self.java_home = java_home
        self.cache_dir = Path(cache_dir)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.node_id = node_id
        self.voters = dict(voters) if voters is not None else None
        self.cluster_id = cluster_id
        self.heap = heap
        self.secure = secure
        self._secrets: tls.Secrets | None = None  # secure: made or read by start()
        self.port: int | None = None
        self.controller_port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None
        self._atexit_registered = False
        self._dir_lock: int | None = None  # a descriptor of the data dir, flock()ed while this launcher uses it

    # -- public API

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise RuntimeError("the broker has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- secure=True: what clients need (read once start() has made them)

    @property
    def ca_file(self) -> Path:
        """The throwaway CA's certificate (PEM) clients must trust: --ssl-cafile."""
        return self._secure().ca_file

    @property
    def password_file(self) -> Path:
        """The file holding the password of `username` (mode 0600): --sasl-password-file."""
        return self._secure().password_file

    @property
    def username(self) -> str:
        return self._secure().username

    @property
    def mechanism(self) -> str:
        """The SASL mechanism clients should use (the broker also takes SCRAM-SHA-256 and PLAIN)."""
        self._secure()
        return tls.MECHANISMS[0]

    def client_options(self) -> dict[str, str]:
        """kafka-python's settings to reach this broker: {} unless secure (then TLS and the SCRAM login)."""
        if not self.secure:
            return {}
        s = self._secure()
        return {"security_protocol": "SASL_SSL", "ssl_cafile": str(s.ca_file), "sasl_mechanism": self.mechanism,
                "sasl_plain_username": s.username, "sasl_plain_password": s.password}

    def script_env(self) -> dict[str, str]:
        """The environment that points the pipeline's scripts at this broker's login (common.settings): {}
        unless secure. The password is passed as its file, never as a value."""
        if not self.secure:
            return {}
        s = self._secure()
        return {"RIDES_SECURITY_PROTOCOL": "SASL_SSL", "RIDES_SASL_MECHANISM": self.mechanism,
                "RIDES_SASL_USERNAME": s.username, "RIDES_SASL_PASSWORD_FILE": str(s.password_file),
                "RIDES_SSL_CAFILE": str(s.ca_file)}

    def _secure(self) -> tls.Secrets:
        if not self.secure:
            raise RuntimeError("the broker is not secure (LocalBroker(..., secure=True))")
        if self._secrets is None:
            raise RuntimeError("the broker has not been started")
        return self._secrets

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, port: int | None = 0, fresh: bool = False, wait: bool = True) -> str:
        """Start the broker and wait until a client can connect; returns "127.0.0.1:PORT".

        port=0 picks a free port, or the one this data dir used last time if it is still free.
        wait=False returns as soon as the JVM runs (a node of a cluster cannot serve before its quorum
        does): call wait_ready() after.
        """
        if self.is_running():
            raise RuntimeError(f"already running at {self.bootstrap_servers}")
        if self.proc is not None:  # it died (killed from outside): reap it and retire its watchdog
            self._stop_jvm()
        dir_lock = self._lock_data_dir()  # first: nothing in a data dir in use may be touched, not even read
        if self.voters is None and not fresh and (self.data_dir / CLUSTER_STATE).exists():
            raise BrokerError(
                f"the data dir {self.data_dir} holds a cluster's data (started with --nodes). Fix: pass its "
                "--nodes again, another --data-dir, or --fresh to start one broker empty there"
            )
        java = check_java(self.java_home)
        libs = resolve_libs(self.kafka_home, self.cache_dir)
        if fresh:  # empty it, but keep the folder: the lock is on it
            empty_dir(self.data_dir)
        if self.secure:
            self._secrets = self._make_secrets(java)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        state = self._load_state()
        self.port, self.controller_port = self._pick_ports(port or 0, state)
        cluster_id = self.cluster_id or state.get("cluster_id") or _new_cluster_id()
        state = {"port": self.port, "controller_port": self.controller_port, "cluster_id": cluster_id}
        self._save_state(state)
        server_properties = self._write_configs()
        classpath = f"{libs}{os.sep}*"
        log4j = f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}"

        if not (self.data_dir / "meta.properties").exists():
            # One node: a dynamic quorum of itself (--standalone). A cluster's node: the static quorum of
            # controller.quorum.voters, which needs no initial-controllers list at format time.
            quorum = ["--standalone"] if self.voters is None else []
            tool = ["kafka.tools.StorageTool", "format", *quorum,
                    "-t", cluster_id, "-c", str(server_properties), *self._scram_arguments()]  # fmt: skip
            argfile = self.data_dir / "format.args"
            if self.secure:
                # The SCRAM user's password must not be on a command line (`ps` shows it to every user): the
                # java launcher reads the main class and its arguments from a file of ours instead (@argfile).
                tls.write_private(argfile, "".join(f'"{arg}"\n' for arg in tool).encode())
                tool = [f"@{argfile}"]
            try:
                fmt = subprocess.run(
                    # A one-shot tool: the quick JIT and the small collector start it in half the time.
                    [java, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", log4j, "-cp", classpath, *tool],
                    capture_output=True, text=True, timeout=120,
                )  # fmt: skip
            finally:
                with contextlib.suppress(FileNotFoundError):
                    argfile.unlink()
            if fmt.returncode != 0:
                raise BrokerError(
                    f"formatting the data dir {self.data_dir} failed: {_tail(fmt.stdout + fmt.stderr)}. "
                    "Fix: start with --fresh or point --data-dir at an empty folder"
                )

        with open(self.log_file, "ab") as out:
            banner = f"\n{_BANNER} Kafka {KAFKA_VERSION} on {self.bootstrap_servers}\n"
            out.write(banner.encode())
            out.flush()
            # Own session and process group: Ctrl-C in a terminal reaches only the launcher, which then
            # stops the JVM cleanly; and the watchdog can signal the whole group.
            self.proc = proc = subprocess.Popen(
                [java, f"-Xms{self.heap}", f"-Xmx{self.heap}", "-Djava.awt.headless=true", log4j,
                 "-cp", classpath, "kafka.Kafka", str(server_properties)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                # The JVM shares the data dir's lock: if this launcher is killed, the dir stays locked
                # until its broker, stopped by the watchdog, is gone too.
                pass_fds=(dir_lock,),
            )  # fmt: skip
        # For people and tests who need the JVM's pid (e.g. to check that nothing is left running).
        (self.data_dir / "broker.pid").write_text(f"{self.proc.pid}\n")
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.proc.pid), str(self.stop_timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
            log.info("Kafka %s ready at %s (pid %d)", KAFKA_VERSION, self.bootstrap_servers, proc.pid)
        return self.bootstrap_servers

    def stop(self, timeout: float | None = None) -> None:
        """Stop the JVM: SIGTERM (a clean shutdown), SIGKILL after `timeout` (default stop_timeout); free the
        data dir. Idempotent."""
        self._stop_jvm(timeout)
        if self._dir_lock is not None:
            os.close(self._dir_lock)  # closing the descriptor releases the flock
            self._dir_lock = None

    def _stop_jvm(self, timeout: float | None = None) -> None:
        timeout = self.stop_timeout if timeout is None else timeout
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("Kafka%s did not stop within %.0f s; killing it", self._which, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            assert watchdog.stdin is not None  # started with stdin=PIPE
            with contextlib.suppress(BrokenPipeError, OSError):
                watchdog.stdin.write(b"stopped")
                watchdog.stdin.close()
            try:
                watchdog.wait(5)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def restart(self) -> str:
        """Stop and start again on the same data dir and the same ports."""
        port = self.port
        self._stop_jvm()  # keeps the data dir locked: no other launcher can take it in between
        return self.start(port=port)

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        return _tail(text.rpartition(_BANNER)[2], lines).rstrip(".")  # this run's lines only

    # -- internals

    def _lock_data_dir(self) -> int:
        """Hold a flock on the data dir itself for as long as this launcher uses it; returns the descriptor.
        A second launcher on it would rewrite the running broker's configs and port, and its broker would
        corrupt the data."""
        if self._dir_lock is None:
            self._dir_lock = lock_dir(self.data_dir)
        return self._dir_lock

    def _load_state(self) -> dict:
        try:
            return json.loads((self.data_dir / _STATE).read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict) -> None:
        (self.data_dir / _STATE).write_text(json.dumps(state, indent=2) + "\n")

    def _pick_ports(self, port: int, state: dict) -> tuple[int, int]:
        if self.voters is not None:  # a cluster's node: the cluster chose both (and checked they are free)
            if not port:
                raise ValueError("a cluster's node needs its client port")
            return port, self.voters[self.node_id]
        if port:
            if not port_is_free(port):
                raise BrokerError(
                    f"port {port} is already in use (another broker? `docker compose down` stops the "
                    "compose one). Fix: stop whatever listens there, or pass --port 0 for any free port"
                )
        elif state.get("port") and port_is_free(state["port"]):
            port = state["port"]  # same data, same address: clients configured last time still work
        else:
            port = free_port()
        # The controller's address is recorded in the metadata log at format time: keep it if possible.
        controller = state.get("controller_port")
        if not controller or controller == port or not port_is_free(controller):
            controller = free_port()
            while controller == port:
                controller = free_port()
        return port, controller

    def _make_secrets(self, java: str) -> tls.Secrets:
        """secure=True: the CA, the broker's certificate and the SCRAM user's password, made at the first
        secure start of this data dir (tools/tls.py) and reused after."""
        if (self.data_dir / "meta.properties").exists() and not (self.data_dir / tls.PASSWORD_FILE).is_file():
            # Its SCRAM user is made when the data dir is formatted (see _scram_arguments): too late now.
            raise BrokerError(
                f"the data dir {self.data_dir} was made without --secure: its broker knows no user to log in "
                f"as. Fix: add --fresh (start empty), or pass another --data-dir"
            )
        try:
            return tls.ensure_secrets(self.data_dir, java)
        except (tls.TlsError, OSError) as e:
            raise BrokerError(f"cannot make the TLS certificates for --secure: {e}. Fix: check that the JDK's "
                              f"keytool runs (`keytool -help`) and that {self.data_dir} is writable") from None

    def _scram_arguments(self) -> list[str]:
        """StorageTool's --add-scram for the user, one per SCRAM mechanism: in KRaft the credentials are records
        of the metadata log, written when the data dir is formatted. [] unless secure."""
        if not self.secure:
            return []
        s = self._secure()
        return [arg for mechanism in tls.SCRAM_MECHANISMS
                for arg in ("--add-scram", f"{mechanism}=[name={s.username},password={s.password}]")]

    def _secure_properties(self) -> dict[str, str]:
        """The client listener as SASL_SSL: TLS with the throwaway CA's broker certificate, and a login as the
        SCRAM user (SCRAM-SHA-512, SCRAM-SHA-256, or PLAIN: inside TLS only). The broker reaches itself the
        same way (a transaction's markers go over the inter-broker listener, even on one node), so it logs
        in as that user too. No authorizer: every user who logs in may do everything, as on PLAINTEXT.
        The controller's listener stays PLAINTEXT, on the loopback: the broker's own way to its controller
        (Kafka's admin tools could reach it too, with --bootstrap-controller, from this machine only)."""
        s = self._secure()
        login = f'username="{s.username}" password="{s.password}"'
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms": ",".join(tls.MECHANISMS),
            "sasl.mechanism.inter.broker.protocol": tls.MECHANISMS[0],
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                f"org.apache.kafka.common.security.scram.ScramLoginModule required {login};",
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config":
                f"org.apache.kafka.common.security.scram.ScramLoginModule required {login};",
            # PLAIN's users are the login module's user_NAME entries (SCRAM's are in the metadata log).
            "listener.name.sasl_ssl.plain.sasl.jaas.config":
                f'org.apache.kafka.common.security.plain.PlainLoginModule required {login} '
                f'user_{s.username}="{s.password}";',
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(s.keystore),
            "ssl.keystore.password": s.keystore_password,
            "ssl.key.password": s.keystore_password,
            # The broker as a client of itself checks its own certificate like any client: the CA, the name.
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(s.ca_file),
        }

    def _write_configs(self) -> Path:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        }
        if self.secure:
            props.update(self._secure_properties())
        if self.voters is None:
            # Dynamic quorum (formatted with --standalone): needs this, and controller.quorum.voters unset.
            props["controller.quorum.bootstrap.servers"] = f"127.0.0.1:{self.controller_port}"
        else:
            # A static quorum: every node a voter, each at its fixed controller port.
            props["controller.quorum.voters"] = quorum_voters(self.voters)
        props.update({"log.dirs": str(self.data_dir), "num.partitions": "1"})
        props.update(replication_properties(1 if self.voters is None else len(self.voters)))
        # Nobody else is going to join: don't make the first consumer of a group wait 3 s.
        props["group.initial.rebalance.delay.ms"] = "0"
        path = self.data_dir / "server.properties"
        text = "".join(f"{k}={v}\n" for k, v in props.items())
        if self.secure:
            tls.write_private(path, text.encode())  # it holds the passwords
        else:
            path.write_text(text)
        log_path = str(self.log_file).replace("\\", "/")
        (self.data_dir / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = File\n"
            f"appender.file.fileName = {log_path}\n"
            "appender.file.append = true\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = File\n"
        )
        return path

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until a client can bootstrap from this node; BrokerError if its JVM dies first or time runs out."""
        proc = self.proc
        if proc is None or self.port is None:
            raise RuntimeError("the broker has not been started")
        started = time.monotonic()
        deadline = started + (self.ready_timeout if timeout is None else timeout)
        while True:
            self.check_alive("died while starting")
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the {self._what} did not become ready within {deadline - started:.0f} s; last lines of "
                    f"{self.log_file}: {self.log_tail()}. Fix: see that log; --fresh starts with empty data"
                )
            options = self.client_options()  # TLS and the login, when secure
            if _accepts_connections(self.port) and metadata_ok(self.bootstrap_servers, client_options=options):
                return
            time.sleep(0.3)

    def check_alive(self, what: str = "died") -> None:
        """BrokerError (quoting this run's log) if the JVM started last has exited."""
        proc = self.proc
        if proc is not None and proc.poll() is not None:
            raise BrokerError(
                f"the {self._what} {what} (exit {proc.returncode}); last lines of "
                f"{self.log_file}: {self.log_tail()}. Fix: see that log; --fresh starts with empty data"
            )

    @property
    def _which(self) -> str:
        return "" if self.voters is None else f" node {self.node_id}"

    @property
    def _what(self) -> str:
        return "broker" if self.voters is None else f"node {self.node_id}"


def _accepts_connections(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def metadata_ok(bootstrap_servers: str, timeout_ms: int = 3000, client_options: dict[str, str] | None = None) -> bool:
    """True once a real Kafka client can bootstrap and describe the cluster (a TCP connect is not enough).
    client_options: how to reach a secure broker (LocalBroker.client_options())."""
    from kafka import KafkaAdminClient  # imported late: `--help` and the Java checks work without it

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
            client_id="broker-readiness-probe",
            **(client_options or {}),
        )
    except Exception:
        return False
    try:
        return bool(admin.describe_cluster().get("brokers"))
    except Exception:
        return False
    finally:
        admin.close()


def wait_until_ready(bootstrap_servers: str, timeout: float, interval: float = 0.5) -> bool:
    """Poll metadata_ok() until it holds (True) or `timeout` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while not metadata_ok(bootstrap_servers):
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _new_cluster_id() -> str:
    # Like Kafka's Uuid.randomUuid(): never starting with "-", which the storage tool would take for an option.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _tail(text: str, lines: int = 5) -> str:
    # Stack frames say nothing to a user; the log lines and exception messages before them do.
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    kept = [ln for ln in kept if not ln.startswith(("at ", "... "))][-lines:]
    return _shorten(" | ".join(kept) or "(empty)", 1200)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------- CLI


_EPILOG = """\
--nodes N (2 to 5) runs a cluster on this machine: N JVMs, each a broker and a controller of one quorum, each
with its own ports (--port P gives them P, P+1, ...; default 19092, 19093, ...), data (DATA_DIR/node-ID) and
log (DATA_DIR/node-ID.log; DATA_DIR defaults to .kafka/cluster). From three nodes, every topic created with the
broker's default replication factor, and the internal ones, gets three replicas and min.insync.replicas 2.
A node that dies is reported in one line and the others keep running; `kill -HUP PID` (the launcher's pid, in
its ready line) starts every dead node again, on its ports and its data. Ctrl-C or SIGTERM stops them all.

--secure (one node): clients must speak TLS and log in (SASL_SSL; SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN) as
the user `rides`. The first secure start of a data dir makes, in it, a throwaway CA (ca.pem: what clients
trust), the broker's certificate for 127.0.0.1 and localhost, and the user's random password (rides.password,
mode 0600; never printed). The ready line says where they are and the settings to use. Restarts reuse them;
--fresh makes new ones. The controller's own port stays PLAINTEXT, on the loopback.
"""


def _nodes(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of nodes") from None
    if not 1 <= n <= MAX_NODES:
        raise argparse.ArgumentTypeError(f"{n}: a cluster here has 1 to {MAX_NODES} nodes")
    return n


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tools.broker",
        description=f"Run a real Apache Kafka {KAFKA_VERSION} broker (KRaft, one node), or a cluster of N nodes "
        "(--nodes N), in the foreground.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--port", type=int,
        help=f"client port (default {DEFAULT_PORT}; with --nodes N the first node's, the others' follow: default "
        f"{DEFAULT_CLUSTER_PORT}; 0 = any free)",
    )  # fmt: skip
    p.add_argument(
        "--data-dir", type=Path,
        help="topics and offsets live here and survive a restart (default .kafka/data in the project; "
        "with --nodes N, .kafka/cluster)",
    )  # fmt: skip
    p.add_argument("--log-file", type=Path, help="the broker's log (default: broker.log next to --data-dir)")
    p.add_argument("--fresh", action="store_true", help="delete the data dir first: start empty")
    p.add_argument(
        "--nodes", type=_nodes, default=1, metavar="N",
        help=f"run a cluster of N nodes (1 to {MAX_NODES}; default 1: one broker, as without it)",
    )  # fmt: skip
    p.add_argument(
        "--cache-dir", type=Path, default=CACHE_DIR,
        help="where Maven-resolved jars are kept (default .cache/kafka-VERSION in the project)",
    )  # fmt: skip
    p.add_argument(
        "--secure", action="store_true",
        help="clients must use TLS and log in (SASL_SSL, user `rides`): a throwaway CA and a password are made "
        "in the data dir (see below)",
    )  # fmt: skip
    p.add_argument("--resolve-only", action="store_true", help="check Java, fetch the jars, print where; exit")
    args = p.parse_args(argv)
    if args.nodes > 1 and args.log_file is not None:
        p.error("--log-file is for one broker; a cluster writes node-ID.log in its --data-dir")
    if args.nodes > 1 and args.secure:
        p.error("--secure is for one broker; a cluster (--nodes) speaks PLAINTEXT")
    if args.port is None:
        args.port = DEFAULT_PORT if args.nodes == 1 else DEFAULT_CLUSTER_PORT
    if args.data_dir is None:
        args.data_dir = DEFAULT_DATA_DIR if args.nodes == 1 else DEFAULT_CLUSTER_DIR
    return args


def _secure_settings(broker: LocalBroker) -> str:
    """What a client needs besides the address, as Kafka's client settings: "" for a PLAINTEXT broker. Never
    the password itself: where it is."""
    if not broker.secure:
        return ""
    return (f" security.protocol=SASL_SSL sasl.mechanism={broker.mechanism} sasl.username={broker.username} "
            f"password file={broker.password_file} ca file={broker.ca_file}")


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # one shutdown path for Ctrl-C and SIGTERM


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # the readiness probe's client chatter
    if args.nodes > 1 and not args.resolve_only:
        from tools.cluster import run_cluster  # imports this module: imported here, when needed

        return run_cluster(args)
    signal.signal(signal.SIGTERM, _on_sigterm)
    broker = LocalBroker(data_dir=args.data_dir, log_file=args.log_file, cache_dir=args.cache_dir, secure=args.secure)
    try:
        if args.resolve_only:
            check_java()
            started = time.monotonic()
            libs = resolve_libs(cache_dir=args.cache_dir)
            print(f"kafka {KAFKA_VERSION} jars: {libs} ({time.monotonic() - started:.1f} s)", flush=True)
            return 0
        started = time.monotonic()
        bootstrap = broker.start(port=args.port, fresh=args.fresh)
        print(
            f"Kafka {KAFKA_VERSION} ready in {time.monotonic() - started:.1f} s: "
            f"bootstrap.servers={bootstrap}{_secure_settings(broker)}  "
            f"(data {broker.data_dir}, log {broker.log_file}; Ctrl-C stops it)",
            flush=True,
        )
        if broker.secure:
            print(f"  the scripts: --bootstrap-servers {bootstrap} --security-protocol SASL_SSL --sasl-mechanism "
                  f"{broker.mechanism} --sasl-username {broker.username} --sasl-password-file {broker.password_file} "
                  f"--ssl-cafile {broker.ca_file}", flush=True)
        assert broker.proc is not None  # start() returned
        while broker.proc.poll() is None:
            time.sleep(0.5)
        code = broker.proc.returncode
        raise BrokerError(
            f"the broker exited unexpectedly (exit {code}); last lines of {broker.log_file}: "
            f"{broker.log_tail()}. Fix: see that log"
        )
    except BrokerError as e:
        print(f"tools.broker: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        log.info("stopping the broker")
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with contextlib.suppress(KeyboardInterrupt):
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
