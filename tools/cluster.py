"""A real Apache Kafka cluster of N nodes (KRaft) on one machine, for development and tests.

    python -m tools.broker --nodes 3 [--port 19092] [--data-dir .kafka/cluster] [--fresh]

or, from Python:

    with LocalCluster(data_dir=tmp, nodes=3) as cluster:
        bootstrap = cluster.start(port=0)    # "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3", all nodes serving
        leader = cluster.leader_of("rides", 0)
        cluster.kill_node(leader)            # SIGKILL: the other nodes keep serving; dead_nodes() says so
        cluster.start_node(leader)           # same ports, same data: it rejoins

Each node is a tools.broker.LocalBroker (its own JVM, watchdog, data dir lock and log) configured as one
voter of a static controller quorum (controller.quorum.voters): process.roles=broker,controller, node ids
1..N, client and controller ports on 127.0.0.1, data in <data-dir>/node-<id>, log in <data-dir>/node-<id>.log,
one cluster id. A static quorum rather than KIP-853's dynamic one: formatting needs no directory ids, and a
controller port taken by something else between two runs can simply be replaced. Replication follows the size
(tools.broker.replication_properties): from three nodes, topics that take the broker's default and the internal
topics have three replicas and min.insync.replicas 2; start() has the committed offsets' and the transactions'
topics created while every node is up (later, with a node gone, they could not get three replicas).
The cluster never stops a node because another one died: a dead node is reported by dead_nodes() (and, in
the CLI, in one line), and start_node() brings it back.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from tools.broker import (
    CACHE_DIR,
    CLUSTER_STATE,
    DEFAULT_CLUSTER_DIR,
    KAFKA_VERSION,
    MAX_NODES,
    BrokerError,
    LocalBroker,
    _accepts_connections,
    _new_cluster_id,
    _on_sigterm,
    check_java,
    empty_dir,
    free_port,
    lock_dir,
    port_is_free,
    resolve_libs,
)

# Three JVMs share a 2-core machine with the pipeline: a development node needs far less than the default 1 GiB.
NODE_HEAP = "384m"
# Without a quorum a node's clean shutdown waits for a controller that cannot be elected: SIGKILL after this.
NO_QUORUM_STOP_TIMEOUT = 5.0
# Created at start (see LocalCluster._create_internal_topics), through a lookup of this group and transactional id.
INTERNAL_TOPICS = ("__consumer_offsets", "__transaction_state")
_WARM_UP_KEY = "tools.cluster-warm-up"

log = logging.getLogger(__name__)


class LocalCluster:
    """N Kafka nodes (each broker + controller, a static quorum of all N) in JVMs this object starts,
    watches and stops, one by one or all together. Node ids are 1..N."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        nodes: int = 3,
        kafka_home: str | None = None,
        java_home: str | None = None,
        cache_dir: str | Path = CACHE_DIR,
        ready_timeout: float = 120.0,
        stop_timeout: float = 30.0,
        heap: str = NODE_HEAP,
    ) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"a cluster has 1 to {MAX_NODES} nodes, not {nodes}")
        self._tmp: tempfile.TemporaryDirectory | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kafka-cluster-")
            data_dir = Path(self._tmp.name) / "data"
        self.data_dir = Path(data_dir).resolve()
        self.size = nodes
        self.kafka_home = kafka_home
        self.java_home = java_home
        self.cache_dir = Path(cache_dir)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.heap = heap
        self.cluster_id: str | None = None
        self.nodes: dict[int, LocalBroker] = {}
        self._stopped: set[int] = set()  # stopped on purpose by stop_node(): not dead
        self._dir_lock: int | None = None
        self._atexit_registered = False

    # -- the whole cluster

    @property
    def node_ids(self) -> list[int]:
        return list(range(1, self.size + 1))

    @property
    def bootstrap_servers(self) -> str:
        """Every node's client address, comma-separated: a client bootstraps from whichever answers."""
        if not self.nodes:
            raise RuntimeError("the cluster has not been started")
        return ",".join(self.nodes[i].bootstrap_servers for i in self.node_ids)

    @property
    def ports(self) -> dict[int, int]:
        return {i: node.port for i, node in self.nodes.items() if node.port is not None}

    @property
    def node_pids(self) -> dict[int, int | None]:
        """Each node's JVM pid while it runs, None for a node that is not running (dead or stopped)."""
        return {i: (node.pid if node.is_running() else None) for i, node in self.nodes.items()}

    def log_file(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}.log"

    def start(self, port: int | None = 0, fresh: bool = False) -> str:
        """Start every node and wait until each serves and the cluster lists all N brokers; returns the
        bootstrap string. port=0: free ports (those of the last run on this data dir if still free);
        port=P: nodes on P, P+1, ..., P+N-1."""
        if any(node.is_running() for node in self.nodes.values()):
            raise RuntimeError(f"already running at {self.bootstrap_servers}")
        try:
            if self._dir_lock is None:
                self._dir_lock = lock_dir(self.data_dir)  # first: a data dir in use is not even read
            state = {} if fresh else self._load_state()  # a data dir that is not this cluster's: refused first
            check_java(self.java_home)
            resolve_libs(self.kafka_home, self.cache_dir)
            if fresh:
                empty_dir(self.data_dir)
            ports, controllers = self._pick_ports(port or 0, state)
            self.cluster_id = state.get("cluster_id") or _new_cluster_id()
            self._save_state({"nodes": self.size, "cluster_id": self.cluster_id, "ports": ports,
                              "controller_ports": controllers})  # fmt: skip
            for node in self.nodes.values():
                node.stop()  # a previous run's: releases its node dir
            voters = dict(zip(self.node_ids, controllers, strict=True))
            self.nodes = {
                i: LocalBroker(
                    data_dir=self.data_dir / f"node-{i}", log_file=self.log_file(i), kafka_home=self.kafka_home,
                    java_home=self.java_home, cache_dir=self.cache_dir, ready_timeout=self.ready_timeout,
                    stop_timeout=self.stop_timeout, node_id=i, voters=voters, cluster_id=self.cluster_id,
                    heap=self.heap,
                )  # fmt: skip
                for i in self.node_ids
            }
            self._stopped.clear()
            if not self._atexit_registered:  # after the nodes' own: runs before them, stopping all at once
                atexit.register(self.stop)
                self._atexit_registered = True
            # Formatting a node's storage is a JVM of its own: format and launch all nodes at once.
            with concurrent.futures.ThreadPoolExecutor(max_workers=self.size) as pool:
                launched = [
                    pool.submit(node.start, port=p, wait=False)
                    for node, p in zip(self.nodes.values(), ports, strict=True)
                ]
                for future in launched:
                    future.result()
            began = time.monotonic()
            self._wait_serving(self.node_ids, timeout=self.ready_timeout, starting=True)
            serving = time.monotonic()
            self._create_internal_topics(timeout=self.ready_timeout)
            log.info(
                "all %d nodes serving %.1f s after launch; internal topics created in %.1f s",
                self.size, serving - began, time.monotonic() - serving,
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise
        log.info("Kafka %s cluster of %d nodes ready at %s", KAFKA_VERSION, self.size, self.bootstrap_servers)
        return self.bootstrap_servers

    def stop(self) -> None:
        """Stop every node (SIGTERM to all at once, SIGKILL after stop_timeout) and free the data dir.
        Idempotent."""
        nodes = list(self.nodes.values())
        running = [node for node in nodes if node.is_running()]
        # A clean shutdown hands the node's partitions over through the controller quorum: without a majority
        # of the nodes running it cannot, and would wait minutes. Then SIGKILL soon (the data is on disk).
        timeout = None if len(running) > self.size // 2 else NO_QUORUM_STOP_TIMEOUT
        if running and timeout is not None:
            log.warning(
                "%d of %d nodes running: no controller quorum, so no clean shutdown; killing %s after %.0f s",
                len(running), self.size, "it" if len(running) == 1 else "them", timeout,
            )  # fmt: skip
        # All at once: stopped one after another, the last ones would wait for a quorum that is gone.
        for node in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGTERM)  # type: ignore[arg-type]  # running: it has a pid
        for node in nodes:
            node.stop(timeout)  # waits for it (then SIGKILL), retires its watchdog, unlocks its dir
        if self._dir_lock is not None:
            os.close(self._dir_lock)
            self._dir_lock = None
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # -- one node

    def node(self, node_id: int) -> LocalBroker:
        if node_id not in self.nodes:
            raise KeyError(f"no node {node_id}: the nodes are {self.node_ids}" if self.nodes else "not started")
        return self.nodes[node_id]

    def kill_node(self, node_id: int) -> int:
        """SIGKILL the node's JVM (a crash: no clean shutdown) and wait until it is gone; returns its pid.
        The other nodes keep running; dead_nodes() reports it until start_node()."""
        node = self.node(node_id)
        if not node.is_running():
            raise RuntimeError(f"node {node_id} is not running")
        assert node.proc is not None  # running
        pid = node.proc.pid
        os.kill(pid, signal.SIGKILL)  # the JVM's pid only: the watchdog stays for the next start
        node.proc.wait()
        return pid

    def stop_node(self, node_id: int) -> None:
        """Stop the node cleanly (SIGTERM: it hands its partitions over first); the others keep running.
        Its data dir stays locked for start_node()."""
        node = self.node(node_id)
        node._stop_jvm()
        self._stopped.add(node_id)

    def start_node(self, node_id: int, timeout: float | None = None) -> int:
        """Start a dead or stopped node again, on its ports and its data, and wait until it serves and the
        cluster lists it among its brokers; returns its new pid."""
        node = self.node(node_id)
        if node.is_running():
            raise RuntimeError(f"node {node_id} is already running (pid {node.pid})")
        node.start(port=node.port, wait=False)
        self._stopped.discard(node_id)
        self._wait_serving([node_id], timeout=self.ready_timeout if timeout is None else timeout)
        assert node.pid is not None
        return node.pid

    def dead_nodes(self) -> dict[int, tuple[int, int]]:
        """The nodes whose JVM exited without being asked to (killed from outside, crashed):
        {node id: (pid, exit status)}, the status as Popen says (-9 for SIGKILL)."""
        dead = {}
        for i, node in self.nodes.items():
            proc = node.proc
            if proc is not None and i not in self._stopped and proc.poll() is not None:
                dead[i] = (proc.pid, proc.returncode)
        return dead

    def running_nodes(self) -> list[int]:
        return [i for i, node in self.nodes.items() if node.is_running()]

    # -- what the cluster says

    def brokers(self) -> dict[int, bool]:
        """The brokers the cluster has registered, {node id: fenced?}; {} if no node answers."""
        return _brokers(self._live_bootstrap())

    def partition(self, topic: str, partition: int = 0) -> dict:
        """{"leader": id (-1 if none), "replicas": [ids], "isr": [ids]} from a metadata request."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self._live_bootstrap(), client_id="tools-cluster")
        try:
            [described] = admin.describe_topics([topic])
        finally:
            admin.close()
        for p in described.get("partitions") or []:
            if p["partition_index"] == partition:
                return {"leader": p["leader_id"], "replicas": sorted(p["replica_nodes"]), "isr": sorted(p["isr_nodes"])}
        raise KeyError(f"{topic} has no partition {partition} (error code {described.get('error_code')})")

    def leader_of(self, topic: str, partition: int = 0) -> int:
        """The node id leading that partition now (-1 while it has none)."""
        return self.partition(topic, partition)["leader"]

    # -- internals

    def _live_bootstrap(self) -> str:
        running = self.running_nodes()
        if not running:
            raise BrokerError("no node of the cluster is running")
        return ",".join(self.nodes[i].bootstrap_servers for i in running)

    def _wait_serving(self, node_ids: list[int], timeout: float, starting: bool = False) -> None:
        """Until each of node_ids accepts connections and every running node is registered and unfenced."""
        deadline = time.monotonic() + timeout
        seen: dict[int, bool] = {}
        while True:
            for i in node_ids if not starting else self.node_ids:
                self.nodes[i].check_alive("died while starting")
            expected = set(self.running_nodes()) | set(node_ids)
            if all(_accepts_connections(self.nodes[i].port) for i in node_ids):  # type: ignore[arg-type]
                seen = _brokers(self._live_bootstrap())
                if expected <= {i for i, fenced in seen.items() if not fenced}:
                    return
            if time.monotonic() > deadline:
                listed = ", ".join(f"{i}{' (fenced)' if f else ''}" for i, f in sorted(seen.items())) or "none"
                i = min(node_ids)
                raise BrokerError(
                    f"the cluster did not list node{'s' if len(node_ids) > 1 else ''} "
                    f"{', '.join(map(str, node_ids))} as serving within {timeout:.0f} s (brokers listed: {listed}); "
                    f"last lines of {self.log_file(i)}: {self.nodes[i].log_tail()}. Fix: see the nodes' logs in "
                    f"{self.data_dir}; --fresh starts with empty data"
                )
            time.sleep(0.5)

    def _create_internal_topics(self, timeout: float) -> None:
        """Have the brokers create the committed offsets' and the transactions' topics now, while every node
        is up: created later, after a node went, they could not get their replicas (three, with three or more
        nodes), and no consumer group nor transaction would work until it came back."""
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + timeout
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, client_id="tools-cluster")
        described: list[dict] = []
        try:
            while True:
                # A coordinator lookup is what makes a broker create the topic behind it.
                with contextlib.suppress(Exception):
                    admin.describe_groups([_WARM_UP_KEY])
                with contextlib.suppress(Exception):
                    admin.describe_transactions([_WARM_UP_KEY])
                with contextlib.suppress(Exception):
                    described = admin.describe_topics(list(INTERNAL_TOPICS))
                    if len(described) == len(INTERNAL_TOPICS) and all(_all_led(t) for t in described):
                        return
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"the cluster did not create its internal topics {', '.join(INTERNAL_TOPICS)} within "
                        f"{timeout:.0f} s ({described}). Fix: see the nodes' logs in {self.data_dir}"
                    )
                time.sleep(0.5)
        finally:
            admin.close()

    def _load_state(self) -> dict:
        if (self.data_dir / "meta.properties").exists() or (self.data_dir / "launcher.json").exists():
            raise BrokerError(
                f"the data dir {self.data_dir} holds a single broker's data. Fix: pass another --data-dir "
                f"(a cluster's default is {DEFAULT_CLUSTER_DIR}), or --fresh to start the cluster empty there"
            )
        try:
            state = json.loads((self.data_dir / CLUSTER_STATE).read_text())
        except (OSError, ValueError):
            return {}
        if state.get("nodes") != self.size:
            raise BrokerError(
                f"the data dir {self.data_dir} holds a cluster of {state.get('nodes')} nodes, not {self.size}. "
                f"Fix: pass --nodes {state.get('nodes')}, another --data-dir, or --fresh to start "
                f"{self.size} nodes empty there"
            )
        return state

    def _save_state(self, state: dict) -> None:
        (self.data_dir / CLUSTER_STATE).write_text(json.dumps(state, indent=2) + "\n")

    def _pick_ports(self, port: int, state: dict) -> tuple[list[int], list[int]]:
        """Client ports (P..P+N-1 for port=P; for 0 the last run's if all free, else any free) and
        controller ports (the last run's if free, else any free); all distinct."""
        n = self.size
        if port:
            ports = list(range(port, port + n))
            for i, p in enumerate(ports, 1):
                if not port_is_free(p):
                    raise BrokerError(
                        f"port {p} (node {i} of {n}: the nodes take ports {port} to {port + n - 1}) is already "
                        "in use (another broker? `docker compose --profile cluster down` stops the compose "
                        "cluster). Fix: stop whatever listens there, or pass --port 0 for any free ports"
                    )
        else:
            last = state.get("ports") or []
            ports = last if len(last) == n and all(map(port_is_free, last)) else []
        taken = set(ports)
        last_controllers = state.get("controller_ports") or []
        controllers = []
        for i in range(n):
            c = last_controllers[i] if i < len(last_controllers) else 0
            if not c or c in taken or not port_is_free(c):
                c = _free_port_except(taken)
            controllers.append(c)
            taken.add(c)
        while len(ports) < n:
            p = _free_port_except(taken)
            ports.append(p)
            taken.add(p)
        return ports, controllers


def _all_led(topic: dict) -> bool:
    partitions = topic.get("partitions") or []
    return not topic.get("error_code") and bool(partitions) and all(p["leader_id"] >= 0 for p in partitions)


def _free_port_except(taken: set[int]) -> int:
    while True:
        p = free_port()
        if p not in taken:
            return p


def _brokers(bootstrap_servers: str, timeout_ms: int = 3000) -> dict[int, bool]:
    """{broker id: fenced?} as the cluster describes itself; {} if it does not answer."""
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
            client_id="cluster-readiness-probe",
        )
    except Exception:
        return {}
    try:
        brokers = admin.describe_cluster().get("brokers") or []
        return {b["broker_id"]: bool(b.get("is_fenced")) for b in brokers}
    except Exception:
        return {}
    finally:
        admin.close()


def _exit_status(returncode: int) -> str:
    """Popen's returncode as a shell shows it: -9 -> "code 137 (SIGKILL)"."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"code {128 - returncode} ({name})"
    return f"code {returncode}"


# ----------------------------------------------------------------------------------------------- CLI


def run_cluster(args: argparse.Namespace) -> int:
    """`python -m tools.broker --nodes N`: start the cluster, print its bootstrap string, then watch it until
    Ctrl-C or SIGTERM (which stop every node). A node that dies is reported in one line and the others keep
    running; SIGHUP starts every dead node again."""
    hup = []  # appended to by the SIGHUP handler; read and cleared by the loop
    signal.signal(signal.SIGHUP, lambda signum, frame: hup.append(signum))
    signal.signal(signal.SIGTERM, _on_sigterm)
    cluster = LocalCluster(data_dir=args.data_dir, nodes=args.nodes, cache_dir=args.cache_dir)
    me = os.getpid()
    try:
        started = time.monotonic()
        bootstrap = cluster.start(port=args.port, fresh=args.fresh)
        _say(
            f"Kafka {KAFKA_VERSION} cluster of {cluster.size} nodes ready in {time.monotonic() - started:.1f} s: "
            f"bootstrap.servers={bootstrap}  (data and logs {cluster.data_dir}/node-ID[.log]; a node that dies "
            f"is reported, `kill -HUP {me}` starts it again; Ctrl-C stops them all)"
        )
        for i, node in cluster.nodes.items():
            _say(f"  node {i}: pid {node.pid}, {node.bootstrap_servers} (controller 127.0.0.1:{node.controller_port}), "
                 f"log {node.log_file}")  # fmt: skip
        reported: set[int] = set()
        while True:
            for i, (pid, code) in cluster.dead_nodes().items():
                if i not in reported:
                    reported.add(i)
                    _say(_dead_line(cluster, i, pid, code, me))
            if hup:
                hup.clear()
                _restart_dead(cluster, reported)
            time.sleep(0.3)
    except BrokerError as e:
        print(f"tools.broker: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        log.info("stopping the cluster's %d nodes", len(cluster.running_nodes()))
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with contextlib.suppress(KeyboardInterrupt):
            cluster.stop()


def _say(line: str) -> None:
    print(line, flush=True)


def _others(n: int) -> str:
    if n == 0:
        return "no other node is running"
    return "the other node keeps running" if n == 1 else f"the other {n} nodes keep running"


def _dead_line(cluster: LocalCluster, node_id: int, pid: int, returncode: int, launcher_pid: int) -> str:
    """One line: which node, how it exited, that the others carry on, how to bring it back."""
    line = f"node {node_id} (pid {pid}) exited with {_exit_status(returncode)}; {_others(len(cluster.running_nodes()))}"
    line += f"; `kill -HUP {launcher_pid}` starts it again"
    if returncode > 0:  # it stopped by itself: its log says why (a signal from outside needs no quote)
        line += f"; last lines of {cluster.log_file(node_id)}: {cluster.node(node_id).log_tail(3)}"
    else:
        line += f" (log {cluster.log_file(node_id)})"
    return line


def _restart_dead(cluster: LocalCluster, reported: set[int]) -> None:
    dead = sorted(cluster.dead_nodes())
    if not dead:
        _say(f"SIGHUP: all {cluster.size} nodes are running; nothing to start")
        return
    for i in dead:
        _say(f"starting node {i} again on {cluster.node(i).bootstrap_servers}")
        started = time.monotonic()
        try:
            pid = cluster.start_node(i)
        except BrokerError as e:
            reported.add(i)  # this line says it; no second "exited" line for the same death
            _say(f"node {i} did not start again: {e}; {_others(len(cluster.running_nodes()))}")
            continue
        reported.discard(i)
        _say(
            f"node {i} is back (pid {pid}) after {time.monotonic() - started:.1f} s; "
            f"{len(cluster.running_nodes())} of {cluster.size} nodes running"
        )
