"""Without a broker: how connect() tells a mistake that waiting cannot mend from a Kafka that is not there (yet),
and the small parts of tools.broker --secure (the secrets' modes, the ready line, the flags).

tests/integration/test_secure.py runs the same mistakes against a real secure broker."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError, SaslAuthenticationFailedError

from common import clients
from common.errors import Fatal
from common.settings import Settings
from common.shutdown import Shutdown
from tools import broker, tls


@contextmanager
def server(behaviour: str) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts and then either closes each connection at once ("close") or
    never answers ("silent"); yields its "host:port"."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if behaviour == "close":
                conn.recv(1024)  # the ApiVersions request (or a TLS ClientHello), then hang up
                conn.close()
            else:
                held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed


def sasl(**changes) -> Settings:
    return Settings(**{"security_protocol": "SASL_SSL", "sasl_username": "rides", "sasl_password": "secret-1",
                       **changes})


# ----------------------------------------------------------------------------------------- diagnose()


def test_a_port_that_hangs_up_at_once_is_said_to_expect_tls_or_sasl():
    with server("close") as where:
        assert clients.diagnose(Settings(bootstrap_servers=where)) == (
            f"Kafka at {where} closed the connection at once: does it expect TLS or SASL (--security-protocol)?")


def test_a_tls_client_cut_off_in_its_handshake_is_told_so():
    with server("close") as where:
        said = clients.diagnose(sasl(bootstrap_servers=where))
    assert said == (f"Kafka at {where} closed the connection at once, during the TLS handshake: does it expect "
                    f"another --security-protocol than SASL_SSL?")


@pytest.mark.parametrize("settings", [Settings(), sasl()], ids=["plaintext", "sasl_ssl"])
def test_a_broker_that_is_down_or_silent_gets_no_diagnosis(settings):
    assert clients.diagnose(settings.model_copy(update={"bootstrap_servers": closed_port()})) is None
    with server("silent") as where:  # a broker still starting: it accepts, and answers later
        started = time.monotonic()
        assert clients.diagnose(settings.model_copy(update={"bootstrap_servers": where})) is None
        assert time.monotonic() - started < clients.DIAGNOSIS_TIMEOUT_MS / 1000 + 2


def test_connect_stops_at_once_on_a_port_that_hangs_up_and_still_waits_for_one_that_is_down():
    def make():
        raise KafkaTimeoutError("Unable to bootstrap")

    with server("close") as where:
        started = time.monotonic()
        with pytest.raises(Fatal, match="closed the connection at once"):
            clients.connect(Settings(bootstrap_servers=where, wait=30), Shutdown(), make, "topics")
        assert time.monotonic() - started < 5
    started = time.monotonic()
    with pytest.raises(Fatal, match=r"is unreachable at .* \(gave up after 1.5 s"):
        clients.connect(Settings(bootstrap_servers=closed_port(), wait=1.5), Shutdown(), make, "topics")
    assert time.monotonic() - started >= 1.5


# ------------------------------------------------------------------------------------------ _explain()


def test_a_refused_login_names_the_user_and_mechanism_never_the_password():
    said = clients._explain(sasl(), SaslAuthenticationFailedError("invalid credentials"), "h:1")
    assert said is not None and "secret-1" not in said
    assert said.startswith("Kafka at h:1 refused the login of user 'rides' (SASL SCRAM-SHA-512): wrong user name or "
                           "password")


def _handshake_failure(cause: BaseException) -> KafkaConnectionError:
    """What kafka-python 3.0.12 raises when the TLS handshake fails: its error, raised while handling the cause."""
    try:
        try:
            raise cause
        except Exception as e:
            raise KafkaConnectionError(f"Handshake failed: {e}")  # noqa: B904 - as kafka-python does: the cause stays
    except KafkaConnectionError as error:
        return error


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_code, error.verify_message = code, message
    return error


def test_an_unknown_ca_says_pass_ssl_cafile_or_asks_about_the_one_given(tmp_path):
    error = _handshake_failure(_verify_error(19, "self-signed certificate in certificate chain"))
    assert clients._explain(sasl(), error, "h:1") == (
        "the TLS certificate of Kafka at h:1 is not signed by a CA we trust (certificate verify failed: self-signed "
        "certificate in certificate chain): pass --ssl-cafile")
    ca = tmp_path / "other-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    said = clients._explain(sasl(ssl_cafile=ca), error, "h:1")
    assert said is not None and said.endswith(f"is --ssl-cafile {ca} the CA that signed it?")
    mismatch = _handshake_failure(_verify_error(62, "Hostname mismatch, certificate is not valid for 'h'."))
    assert "is not valid for that address" in (clients._explain(sasl(), mismatch, "h:1") or "")
    assert not clients._tls_handshake_cut(error), "an untrusted certificate is no hang-up"
    assert clients._tls_handshake_cut(_handshake_failure(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")))
    assert clients._explain(sasl(), KafkaTimeoutError("Unable to bootstrap"), "h:1") is None


# --------------------------------------------------------------------------------- tools.broker --secure


def test_secrets_are_written_for_the_owner_alone_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        tls.write_private(tmp_path / "s", b"x\n")
        (tmp_path / "s").chmod(0o644)
        tls.write_private(tmp_path / "s", b"y\n")  # replaced, not written through
    finally:
        os.umask(old)
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o600 and (tmp_path / "s").read_bytes() == b"y\n"


def test_the_ready_line_says_where_the_secrets_are_never_the_password(tmp_path):
    b = broker.LocalBroker(data_dir=tmp_path / "data", secure=True)
    assert broker._secure_settings(broker.LocalBroker(data_dir=tmp_path / "plain")) == ""
    b._secrets = tls.Secrets(ca_file=Path("/d/ca.pem"), keystore=Path("/d/broker.p12"), keystore_password="k-secret",
                             password_file=Path("/d/rides.password"), password="p-secret")
    line = broker._secure_settings(b)
    assert line == (" security.protocol=SASL_SSL sasl.mechanism=SCRAM-SHA-512 sasl.username=rides "
                    "password file=/d/rides.password ca file=/d/ca.pem")
    assert "secret" not in str(b.script_env())
    assert b.client_options()["sasl_plain_password"] == "p-secret"  # the clients' own, in memory


def test_secure_is_for_one_broker(capsys):
    with pytest.raises(SystemExit):
        broker._parse_args(["--secure", "--nodes", "3"])
    assert "--secure is for one broker" in capsys.readouterr().err
    with pytest.raises(ValueError):
        broker.LocalBroker(secure=True, voters={1: 9093})


def test_the_demo_takes_the_scripts_security_variables_and_will_not_start_a_plaintext_broker_for_them(monkeypatch):
    import contextlib

    from tools import demo

    for name in [n for n in os.environ if n.startswith("RIDES_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RIDES_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RIDES_SASL_USERNAME", "rides")
    monkeypatch.setenv("RIDES_SASL_PASSWORD", "s3cret")
    settings = demo.kafka_settings()
    options = clients.security(settings)
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_plain_password"] == "s3cret"
    # Nothing on localhost:9092: the demo would start a PLAINTEXT broker, which the scripts could not log in to.
    monkeypatch.setattr(demo, "_something_listens", lambda host, port: False)
    started = []
    monkeypatch.setattr(demo, "LocalBroker", lambda *a, **k: started.append("broker"))
    monkeypatch.setattr(demo, "_compose_command", lambda: started.append("compose"))
    with contextlib.ExitStack() as stack, pytest.raises(demo.BrokerError, match="RIDES_SECURITY_PROTOCOL is SASL_SSL"):
        demo.acquire_broker(stack, None, settings)
    assert started == []


def test_a_bad_security_variable_is_one_line_for_the_demo(monkeypatch):
    from tools import demo

    monkeypatch.setenv("RIDES_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(demo.BrokerError, match=r"^RIDES_SECURITY_PROTOCOL in the environment: "):
        demo.kafka_settings()
    # A rule across settings has no one variable to name, and no "Value error, " prefix.
    monkeypatch.setenv("RIDES_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.delenv("RIDES_SASL_USERNAME", raising=False)
    with pytest.raises(demo.BrokerError, match=r"^the RIDES_\* variables in the environment: [^V]"):
        demo.kafka_settings()
