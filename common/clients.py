"""Kafka clients for the scripts: every non-default setting is here, once, with its reason."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    InvalidReplicationFactorError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    for_code,
)
from kafka.partitioner import DefaultPartitioner

from common import topics
from common.decided import home_partition
from common.errors import Fatal, Interrupted
from common.settings import ConsumerSettings, Settings
from common.shutdown import Shutdown

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long one connection attempt may take before connect() backs off and tries again.
ATTEMPT_TIMEOUT_MS = 5000
# kafka-python backs off reconnecting to a lost broker exponentially up to 30 s (the Java client: 1 s),
# so after a broker restart a script would sit idle for up to half a minute after the broker is back.
RECONNECT_BACKOFF_MAX_MS = 1000
# While Kafka is down, how often a producer's I/O thread may ask for new metadata (see
# _ThrottledMetadataRequests); the client's own retry backoff is 0.1 s.
METADATA_REQUEST_INTERVAL = 0.1


def security(settings: Settings) -> dict[str, Any]:
    """How every client reaches the cluster: TLS and a SASL login, as the settings say (PLAINTEXT: nothing)."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol.endswith("SSL"):
        # The broker's certificate is checked against the CA, and its name against the address dialled.
        options.update(ssl_check_hostname=True, ssl_cafile=settings.ssl_cafile and str(settings.ssl_cafile),
                       ssl_certfile=settings.ssl_certfile and str(settings.ssl_certfile),
                       ssl_keyfile=settings.ssl_keyfile and str(settings.ssl_keyfile))
    if settings.security_protocol.startswith("SASL"):
        options.update(sasl_mechanism=settings.sasl_mechanism, sasl_plain_username=settings.sasl_username,
                       sasl_plain_password=settings.password)
    return options


def admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        **security(settings),
        client_id="rides-admin",
        bootstrap_timeout_ms=ATTEMPT_TIMEOUT_MS,  # connect() does the waiting, with backoff and a log line
    )


def producer(settings: Settings, client_id: str, *, transactional_id: str | None = None,
             writes_to: Iterable[str] = (), linger_ms: int = 10, max_block_ms: int = 60_000) -> KafkaProducer:
    """The pipeline's producer. `writes_to`: the topics (full names) it will write to, whose metadata it
    fetches now rather than on the first send to each, which would wait for it (about 0.1 s per topic here:
    the first rides' latency). `max_block_ms`: how long send() may block when the producer's buffer is full."""
    p = KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        **security(settings),
        client_id=client_id,
        bootstrap_timeout_ms=ATTEMPT_TIMEOUT_MS,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        # A ride is sent only once every in-sync replica has it, and the broker drops the duplicate a
        # retry after a timeout would otherwise write. (kafka-python 3's defaults; spelled out because
        # the pipeline's guarantees rest on them.)
        acks="all",
        enable_idempotence=True,
        # Wait up to 10 ms to fill a batch: one request then carries many rides instead of one (api.py: 5 ms,
        # each request waits for its ride's batch).
        linger_ms=linger_ms,
        # Batches of up to 128 KiB instead of 16 KiB: kafka-python wakes its I/O thread (a syscall) on nearly
        # every send once a partition has a full batch queued; bigger batches fill less often, and the
        # wakeups halve (issue 9: rides.py 1.68x as fast, transaction.py 1.36x, a raw producer 1.64x).
        batch_size=128 * 1024,
        # Set for transaction.py's exactly-once mode: a stable id per instance, so a restarted instance
        # fences its crashed predecessor and aborts the transaction it left open.
        transactional_id=transactional_id,
        # An open transaction of an instance that died for good blocks read_committed readers of its
        # partitions until it times out: keep that short (default 60 s).
        transaction_timeout_ms=15000,
        # Transactional: 20 ms, not the default 100 ms. A transaction begun right after the last one committed
        # is often told CONCURRENT_TRANSACTIONS (the broker is still writing the last one's markers) and
        # retried; kafka-python 3.0.12's sender then sleeps retry_backoff_ms, ignoring the 20 ms its own
        # transaction manager asks for in that case (as the Java client does): at 100 rides/s, one batch in
        # twenty waited 100 ms, the p99 of request-to-confirmed (issue 9: p95 215 -> 37 ms).
        retry_backoff_ms=20 if transactional_id else 100,
        # Kafka's default partitioner (murmur2 of the key), at less than half the cost of kafka-python's.
        partitioner=KeyPartitioner(),
        # api.py sends from its event loop, where a send() that blocks stops every request: 100 ms there, then
        # KafkaTimeoutError (its 503). (Delivery and request timeouts stay the defaults: shortened on an idempotent
        # producer, kafka-python 3.0.12 loses its producer id after a timed-out batch and never sends again.)
        max_block_ms=max_block_ms,
    )
    _throttle_metadata_requests(p)
    _keep_transactional_requests(p)
    try:
        for topic in writes_to:
            # partitions_for() would wait up to max_block_ms (60 s) and not hear a stop request: a bounded
            # wait (private, pinned version) raises KafkaTimeoutError instead, which connect() retries.
            p._wait_on_metadata(topic, ATTEMPT_TIMEOUT_MS)
    except BaseException:
        p.close(timeout=0)
        raise
    return p


class KeyPartitioner(DefaultPartitioner):
    """The partition of a keyed record as Kafka's default partitioner picks it (murmur2 of the key, the Java
    client's and kafka-python's), through common.decided's murmur2: kafka-python's hashes byte by byte and
    sorts the partitions at every send, about a tenth of a send's cost. Unkeyed records: kafka-python's own."""

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or partitions is None:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        return home_partition(serialized_key, len(partitions))  # a topic's partitions are 0 .. n-1


def close_producer(p: KafkaProducer, timeout: float) -> None:
    """Close a producer within about `timeout` s, abandoning what Kafka has not acknowledged by then
    (those sends fail).

    Workaround for kafka-python 3.0.12 (pinned): close() flushes first and raises KafkaTimeoutError when
    that flush times out (Kafka unreachable), leaving the producer open: its I/O thread keeps running and
    at exit the interpreter closes it again ("Exception ignored in ... KafkaTimeoutError"). Stopping the
    I/O thread first fails the sends still pending, so close() has nothing left to wait for.
    """
    try:
        p.flush(timeout)
    except KafkaTimeoutError:
        sender = p._sender  # private, as above
        sender.force_close()
        sender.join(timeout)
    p.close(timeout=0)


class _ThrottledMetadataRequests:
    """The producer's cluster metadata as its I/O thread sees it, with at most one update request per
    METADATA_REQUEST_INTERVAL while one is pending.

    Workaround for kafka-python 3.0.12 (pinned): while a partition with records waiting has no leader, as
    after the broker shut down, the I/O thread calls request_update() on every pass of its loop, and
    each call wakes that same loop at once: the thread spins, a whole core for as long as the outage
    lasts (bench/outage_cpu.py). A repeat request while one is pending only wakes the loop; the metadata
    refresh retries by itself with its own backoff, and what the caller gets back is the pending update
    either way.
    """

    def __init__(self, cluster) -> None:
        self._cluster = cluster
        self._pending = None  # the future of the last update requested
        self._next_request = 0.0

    def __getattr__(self, name: str):
        return getattr(self._cluster, name)

    def request_update(self):
        now = time.monotonic()
        if self._pending is None or self._pending.is_done or now >= self._next_request:
            self._pending = self._cluster.request_update()
            self._next_request = now + METADATA_REQUEST_INTERVAL
        return self._pending


def _throttle_metadata_requests(p: KafkaProducer) -> None:
    sender = p._sender  # private: the workaround is for the pinned version only
    sender._metadata = _ThrottledMetadataRequests(sender._metadata)


def _keep_transactional_requests(p: KafkaProducer) -> None:
    """Workaround for kafka-python 3.0.12 (pinned): the I/O thread drops a transactional request (AddOffsetsToTxn,
    AddPartitionsToTxn, EndTxn) whose coordinator cannot be connected to. Its _maybe_send_transactional_request
    asks await_ready(coordinator), which raises KafkaConnectionError for a node that is down (SIGKILLed) instead
    of returning False; the except branch looks the coordinator up again but never re-enqueues the request (the
    False branch does), so send_offsets_to_transaction() or commit_transaction() waits forever (no timeout).
    Answering False takes the branch that retries it once the new coordinator is found."""
    client = p._sender._client  # private: the workaround is for the pinned version only
    await_ready = client.await_ready

    def await_ready_or_not(node_id, timeout_ms=30000):
        try:
            return await_ready(node_id, timeout_ms=timeout_ms)
        except KafkaConnectionError:
            return False

    client.await_ready = await_ready_or_not


def consumer(
    settings: ConsumerSettings,
    topics: list[str],
    client_id: str,
    listener: ConsumerRebalanceListener | None = None,
) -> KafkaConsumer:
    c = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        **security(settings),
        client_id=client_id,
        bootstrap_timeout_ms=ATTEMPT_TIMEOUT_MS,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        # Committed offsets are what lets a restart resume where the last run stopped.
        group_id=settings.group_id,
        # Commit only after the work is done (each script commits itself); auto-commit on a timer
        # commits records never processed (lost on a crash) or forgets processed ones (duplicates).
        enable_auto_commit=False,
        # A new group starts from the first ride ever produced, not from what arrives after it joined.
        auto_offset_reset="earliest",
        # Never see rides from a transaction that transaction.py aborted or has not committed yet.
        isolation_level="read_committed",
        # One commit (or one transaction) per batch of up to 500 records, not per record.
        max_poll_records=500,
        # A crashed instance's partitions move to the others after 10 s instead of 45 s.
        session_timeout_ms=10000,
        heartbeat_interval_ms=3000,
        # No deserializers on purpose: values stay bytes so that decoding happens in our code, where an
        # unreadable record goes to the dead-letter topic instead of crashing poll().
    )
    c.subscribe(topics, listener=listener)
    return c


def reader(settings: Settings, client_id: str, isolation_level: str = "read_committed") -> KafkaConsumer:
    """A consumer without a group, for reading whole partitions on demand (assign + seek): transaction.py's
    changelog restore and the dead-letter tool. It never commits and rebalances nobody."""
    return KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        **security(settings),
        client_id=client_id,
        bootstrap_timeout_ms=ATTEMPT_TIMEOUT_MS,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # read_committed: only what downstream readers see (an aborted transaction's records never
        # happened). read_uncommitted only to learn where a log ends, open transactions included.
        isolation_level=isolation_level,
        # A mistyped topic name must say "does not exist", not create an empty topic.
        allow_auto_create_topics=False,
    )


def connect(settings: Settings, shutdown: Shutdown, make: Callable[[], T], what: str) -> T:
    """make() a client and make its first calls, retrying the whole step with backoff while Kafka is
    unreachable, for up to settings.wait s.

    Any retriable Kafka error counts, not only a failed bootstrap: a broker that stops or restarts while
    a script starts fails the calls made after the constructor too (topics, transactions). make() must
    be safe to run again, and close what it built when it fails.

    What waiting cannot mend stops the script at once with one line naming it (Fatal): a login refused, a
    certificate not trusted, a port that expects another protocol. kafka-python retries those like a broker
    that is down, so after a failed attempt connect() asks why (diagnose()).
    """
    deadline = time.monotonic() + settings.wait
    delay = 0.5
    warned = False
    while True:
        try:
            return make()
        except KafkaError as e:
            error = e
        # Asked outside the except block: diagnose() reads the ssl module's error that kafka-python's own error
        # was raised over (its __context__), which Python replaces when an error is raised inside a handler.
        cause = _explain(settings, error, settings.bootstrap_servers) or (
            diagnose(settings) if error.retriable else None)
        if cause:
            raise Fatal(cause)
        if not error.retriable:
            raise error
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Fatal(
                f"Kafka is unreachable at {settings.bootstrap_servers} (gave up after {settings.wait:g} s: "
                f"{error}); start it with `docker compose up -d` or `make broker`, "
                f"or pass --bootstrap-servers"
            )
        if not warned:
            log.warning("Kafka is not reachable at %s yet (%s); retrying for up to %.0f s",
                        settings.bootstrap_servers, what, remaining)
            warned = True
        if shutdown.sleep(min(delay, remaining)):
            raise Interrupted()
        delay = min(delay * 2, 5.0)


# How long diagnose() gives one connection (TCP, TLS, ApiVersions, the SASL login, one metadata request).
DIAGNOSIS_TIMEOUT_MS = 3000
# An abrupt close is also what a broker that is shutting down does: diagnose() says so only if a second
# connection, this much later, is closed the same way (a broker that is gone refuses it instead).
CONFIRM_CLOSE_AFTER = 0.5


def diagnose(settings: Settings) -> str | None:
    """Why the clients cannot connect, in one line, when waiting will not help; None when Kafka is just not
    there (yet), or answers: retry then, as always.

    kafka-python 3.0.12 (pinned) retries every failed connection, a refused login and an untrusted
    certificate included, until its bootstrap times out, and says why only in its own logs (silenced, see
    common.cli). So this opens one connection of its own per bootstrap server through kafka-python's own
    connection code (private: KafkaConnectionManager and KafkaConnection, the same TLS context and SASL
    exchange as the clients'), makes the first requests a client makes, and reads the failure it gets.
    """
    for server in settings.bootstrap_servers.split(","):
        verdict = _first_requests(settings, server.strip())
        if verdict is not None and verdict[1]:  # inferred from a closed connection: only if it happens again
            time.sleep(CONFIRM_CLOSE_AFTER)
            verdict = _first_requests(settings, server.strip())
        if verdict is not None:
            return verdict[0]
    return None


def _first_requests(settings: Settings, server: str) -> tuple[str, bool] | None:
    """Connect to one server as the clients do (TCP, TLS, ApiVersions, the SASL login) and ask for metadata.
    If that failed for a reason waiting won't mend: (the one line, whether it was inferred from the broker
    closing the connection, which a broker shutting down does too); else None."""
    # kafka-python's internals, imported here: only diagnose() uses them (pinned version, see above).
    from kafka.errors import KafkaConnectionError, KafkaProtocolError
    from kafka.net.manager import KafkaConnectionManager
    from kafka.net.selector import NetworkSelector
    from kafka.protocol.metadata import MetadataRequest

    conn = None
    logged_in = False  # the connection's set-up (ApiVersions, and the SASL login) completed

    async def attempt() -> Exception | None:
        nonlocal conn, logged_in
        conn = manager.get_connection(node.node_id, timeout_ms=DIAGNOSIS_TIMEOUT_MS, pop_on_close=False,
                                      refresh_metadata_on_err=False)
        try:
            # TCP, TLS, ApiVersions and the SASL login. Bounded here: kafka-python gives the TLS handshake no
            # timeout of its own (a port that accepts and never answers would hold this forever).
            await manager.wait_for(conn.init_future, DIAGNOSIS_TIMEOUT_MS)
            logged_in = True
            # A listener that wants a login it did not get answers ApiVersions, then closes at this request.
            await conn.send_request(MetadataRequest(topics=MetadataRequest.NO_TOPICS, allow_auto_topic_creation=False,
                                                    include_cluster_authorized_operations=False,
                                                    include_topic_authorized_operations=False))
        except Exception as e:  # the failure is the answer
            return e
        return None

    net = NetworkSelector(client_id="rides-diagnosis")
    try:
        manager = KafkaConnectionManager(net, bootstrap_servers=server, client_id="rides-diagnosis",
                                         request_timeout_ms=DIAGNOSIS_TIMEOUT_MS, **security(settings))
        try:
            node = manager.cluster.bootstrap_brokers()[0]
            error = net.run(attempt)  # no I/O thread: run() drives the loop on this thread until attempt() ends
        finally:
            manager.close()
    except Exception as e:  # the attempt itself went wrong, not the connection: no diagnosis, connect() goes on
        log.debug("diagnosing the connection to %s failed: %r", server, e)
        return None
    finally:
        net.close()
    where = f"{node.host}:{node.port}"
    if error is None:
        return None
    explained = _explain(settings, error, where)
    if explained:
        return explained, False
    # The connection was made (TCP, and TLS if any), then closed, or answered with something that is no Kafka
    # response: the broker hangs up on what it cannot read, such as a request in plaintext on a TLS port.
    # (connection_made() sets conn.parser, never unset: a broker that is down refuses the TCP connection before
    # that; a slow one times out, which is no KafkaConnectionError.)
    if conn is None:
        return None
    made = conn.parser is not None
    if _tls_handshake_cut(error):
        return (f"Kafka at {where} closed the connection at once, during the TLS handshake: does it expect another "
                f"--security-protocol than {settings.security_protocol}?"), True
    if not made or not isinstance(error, (KafkaConnectionError, KafkaProtocolError)):
        return None
    if settings.security_protocol.startswith("SASL") and not logged_in and conn.broker_version_data is not None:
        # Closed after ApiVersions, during the SASL exchange: the broker hangs up on a failed login, right after
        # its answer, and kafka-python drops an answer that arrives with the end of the connection.
        return _login_refused(settings, where), True
    if settings.security_protocol == "PLAINTEXT":
        return (f"Kafka at {where} closed the connection at once: does it expect TLS or SASL "
                f"(--security-protocol)?"), True
    return (f"Kafka at {where} closed the connection at once: does it expect another --security-protocol than "
            f"{settings.security_protocol}?"), True


def _login_refused(settings: Settings, where: str) -> str:
    return (f"Kafka at {where} refused the login of user {settings.sasl_username!r} (SASL {settings.sasl_mechanism}): "
            f"wrong user name or password; check --sasl-username and the password (RIDES_SASL_PASSWORD or "
            f"--sasl-password-file)")


def _explain(settings: Settings, error: BaseException, where: str) -> str | None:
    """The one line for a failure to connect that waiting will not mend; None for any other error."""
    import ssl

    from kafka.errors import IllegalSaslStateError, SaslAuthenticationFailedError, UnsupportedSaslMechanismError

    if isinstance(error, SaslAuthenticationFailedError):
        return _login_refused(settings, where)
    if isinstance(error, UnsupportedSaslMechanismError):
        return f"Kafka at {where} does not take SASL {settings.sasl_mechanism} ({error}): pass --sasl-mechanism"
    if isinstance(error, IllegalSaslStateError):  # a listener without SASL asked for a login
        return (f"Kafka at {where} does not expect a SASL login: does it expect another --security-protocol than "
                f"{settings.security_protocol}?")
    # kafka-python wraps the TLS handshake's failure: KafkaConnectionError('Handshake failed: ...') raised while
    # handling the ssl error, which stays its __context__.
    cert = error.__context__
    if isinstance(cert, ssl.SSLCertVerificationError):
        reason = f"certificate verify failed: {cert.verify_message}"
        if cert.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return (f"the TLS certificate of Kafka at {where} is not valid for that address ({reason}): pass "
                    f"--bootstrap-servers with a name or address the certificate lists")
        if cert.verify_code in (2, 18, 19, 20, 21):  # unknown issuer, self-signed (chain), cannot verify the leaf
            fix = (f"is --ssl-cafile {settings.ssl_cafile} the CA that signed it?" if settings.ssl_cafile
                   else "pass --ssl-cafile")
            return f"the TLS certificate of Kafka at {where} is not signed by a CA we trust ({reason}): {fix}"
        return f"the TLS certificate of Kafka at {where} is refused ({reason})"
    return None


def _tls_handshake_cut(error: BaseException) -> bool:
    """Whether the TLS handshake failed because the other end hung up, or answered with something that is no
    TLS: a PLAINTEXT listener closes the connection on a ClientHello. (kafka-python raises KafkaConnectionError
    while handling the ssl module's error, which stays its __context__.)"""
    import ssl

    cause = error.__context__
    if "Handshake failed" not in str(error) or isinstance(cause, ssl.SSLCertVerificationError):
        return False
    return isinstance(cause, (ssl.SSLEOFError, ConnectionError)) or (
        isinstance(cause, ssl.SSLError) and cause.reason in ("WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING",
                                                              "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"))


def with_admin(settings: Settings, shutdown: Shutdown, step: Callable[[KafkaAdminClient], T], what: str) -> T:
    """step(admin) with an admin client of its own, both retried as one (connect()) while Kafka is unreachable."""
    def attempt() -> T:
        admin_client = admin(settings)
        try:
            return step(admin_client)
        finally:
            admin_client.close()

    return connect(settings, shutdown, attempt, what)


def ensure_topics(settings: Settings, shutdown: Shutdown, names: list[str] | None = None) -> None:
    """A script's first step: wait for Kafka (as connect() does), then create the topics still missing."""
    with_admin(settings, shutdown, lambda a: create_topics(a, settings, names), "topics")


def ensure_decided_topic(settings: Settings, shutdown: Shutdown, group_id: str, retention_ms: int) -> None:
    """create_decided_topic(), retried as connect() does; a topic that cannot be used stops the script."""
    try:
        with_admin(settings, shutdown, lambda a: create_decided_topic(a, settings, group_id, retention_ms),
                   "the decided rides' changelog topic")
    except ValueError as e:
        raise Fatal(str(e)) from None


# ------------------------------------------------------------------------------------ topics


def replication(admin: KafkaAdminClient) -> tuple[int, dict[str, str]]:
    """The replication factor of the pipeline's topics and the configs that go with it: three copies where there
    are three brokers or more, and min.insync.replicas 2, so that acks=all means two brokers have each record
    (one may then fail without losing a ride or stopping a producer); on fewer brokers, one copy per broker."""
    brokers = len(admin.describe_cluster()["brokers"])
    if brokers >= 3:
        return 3, {"min.insync.replicas": "2"}
    return max(brokers, 1), {}


def create_topics(admin: KafkaAdminClient, settings: Settings, names: list[str] | None = None) -> None:
    """Create the pipeline's topics that do not exist yet; safe to call from every script at start."""
    wanted = {settings.topic(n): topics.PARTITIONS[n] for n in (names or topics.PARTITIONS)}
    existing = set(admin.list_topics())
    missing = {t: p for t, p in wanted.items() if t not in existing}
    configs = {settings.topic(n): c for n, c in topics.CONFIGS.items()}
    if missing:
        factor, replicated = replication(admin)
        _create(admin, {t: {"num_partitions": p, "replication_factor": factor,
                            "configs": {**replicated, **configs.get(t, {})}} for t, p in missing.items()})


def create_decided_topic(admin: KafkaAdminClient, settings: Settings, group_id: str, retention_ms: int) -> str:
    """Create transaction.py's changelog of decided rides if missing; returns its name.

    It has as many partitions as ride_details: partition p holds the decisions of the rides read from
    partition p, so the instance that owns p restores exactly p. Each record lists the rides of one batch,
    and no ride is written twice, so compaction would remove nothing: old batches are deleted by time
    instead, once they are older than the window the state keeps (hence the retention).
    """
    source, topic = settings.topic(topics.RIDE_DETAILS), settings.topic(topics.decided_topic(group_id))
    counts = {name: len(t["partitions"]) for name, t in described(admin, [source, topic], wait_for=[source]).items()}
    if source not in counts:
        raise ValueError(f"{source} does not exist")
    configs = {
        "cleanup.policy": "delete",
        "retention.ms": str(retention_ms),
        # Delete in steps of an hour at most, rather than in whole default segments of a week.
        "segment.ms": str(min(retention_ms, 3_600_000)),
    }
    if topic not in counts:
        factor, replicated = replication(admin)
        _create(admin, {topic: {"num_partitions": counts[source], "replication_factor": factor,
                                "configs": {**replicated, **configs}}})
    elif counts[topic] != counts[source]:
        raise ValueError(f"{topic} has {counts[topic]} partitions and {source} {counts[source]}: they must match "
                         f"(partition p remembers the rides of partition p); delete {topic} to start it afresh")
    else:  # the window may have changed since the topic was created (--dedup-hours): keep the disk in step
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)])
    return topic


def described(admin: KafkaAdminClient, names: list[str], wait_for: list[str] | None = None,
              timeout_s: float = 10.0) -> dict[str, dict]:
    """The metadata of each named topic that exists, by name.

    A cluster's brokers learn of a new topic one after the other, and each request goes to whichever broker
    is least busy: one that does not know yet of a topic created a moment ago (by this script or another)
    answers "unknown topic". So a topic of `wait_for` (all of `names` unless given) missing from the answer
    is asked for again until timeout_s; only then is it taken as not existing.
    """
    must = set(names if wait_for is None else wait_for)
    deadline = time.monotonic() + timeout_s
    while True:
        found = {t["name"]: t for t in admin.describe_topics(names) if t["error_code"] == 0 and t["partitions"]}
        if must <= set(found) or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)


def _create(admin: KafkaAdminClient, specs: dict[str, dict]) -> None:
    response = admin.create_topics(specs, raise_errors=False)
    for result in response["topics"]:
        error = for_code(result["error_code"])
        # Another script may have created it a moment ago: that is success too.
        if error.errno == 0 or error is TopicAlreadyExistsError:
            continue
        message = f"cannot create topic {result['name']}: {result.get('error_message')}"
        if error is InvalidReplicationFactorError:
            # A broker that is (re)starting answers "only 0 broker(s) are registered" for a moment; the
            # replication factor asked for is what the cluster's brokers allow, so that is a pause: retried (connect).
            raise KafkaTimeoutError(message)
        raise error(message)
    admin.wait_for_topics(list(specs))
    log.info("created topics %s", ", ".join(sorted(specs)))

