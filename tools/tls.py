"""The secrets of `python -m tools.broker --secure`: a throwaway CA, a broker certificate it signed, a SCRAM user.

Everything is made once per data dir, at the first secure start, and reused by the next ones (--fresh makes
new ones). The files, beside the broker's data (the secrets mode 0600):

    ca.pem               the throwaway CA's certificate: what clients trust (--ssl-cafile)
    broker.p12           the broker's private key and certificate chain (PKCS12), for 127.0.0.1 and localhost
    broker.p12.password  that keystore's password
    rides.password       the password of the SCRAM user `rides` (--sasl-password-file)

The certificates are made with Java's keytool, which comes with the JDK the broker needs anyway: no Python
package is added. Three steps of one or two short JVMs each (a few seconds on a busy 2-core machine):
1. the CA's EC key and self-signed certificate (basicConstraints CA:true, critical) in a scratch keystore;
2. the broker's EC key and its certificate, signed by the CA in the same keystore (keytool -signer), with
   the names clients dial as subject alternative names (IP 127.0.0.1, DNS localhost);
3. the broker's entry (its key and the chain broker, CA) copied into a keystore of its own, and the CA's
   certificate exported as PEM.
The scratch keystore, the only place the CA's private key ever was, lives in a private temporary folder that
is deleted at once: nothing can be signed with this CA afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USERNAME = "rides"
# Clients use the first; the broker accepts each (PLAIN only ever inside TLS, on this listener).
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
CA_FILE = "ca.pem"
KEYSTORE = "broker.p12"
KEYSTORE_PASSWORD_FILE = "broker.p12.password"
PASSWORD_FILE = f"{USERNAME}.password"
# Ten years: a development broker's data dir may live long, and nothing else ever trusts this CA.
VALIDITY_DAYS = "3650"
# keytool is a one-shot tool: the quick JIT and the small collector halve its start on a busy machine.
_QUICK_JVM = ["-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC"]


class TlsError(Exception):
    """keytool failed; the message is one line (tools.broker turns it into a BrokerError with a fix)."""


@dataclass(frozen=True)
class Secrets:
    """Where a secure broker's secrets are, and the two passwords it needs in its configuration."""

    ca_file: Path
    keystore: Path
    keystore_password: str
    password_file: Path
    password: str
    username: str = USERNAME


def ensure_secrets(folder: Path, java: str) -> Secrets:
    """The folder's secrets, each made now if missing: the user's password, and the certificates (a CA, the
    broker's keystore and its password; all three made again if any is missing)."""
    if not (folder / PASSWORD_FILE).is_file():
        # URL-safe (A-Z a-z 0-9 - _): nothing to quote in a JAAS line or a --add-scram argument.
        write_private(folder / PASSWORD_FILE, secrets.token_urlsafe(24).encode() + b"\n")
    if not all((folder / name).is_file() for name in (CA_FILE, KEYSTORE, KEYSTORE_PASSWORD_FILE)):
        keystore_password = secrets.token_urlsafe(24)
        ca_pem, keystore = make_certificates(java, keystore_password)
        with contextlib.suppress(FileNotFoundError):
            (folder / CA_FILE).unlink()  # last written: a launcher killed before it leaves a set made again
        write_private(folder / KEYSTORE, keystore)
        write_private(folder / KEYSTORE_PASSWORD_FILE, keystore_password.encode() + b"\n")
        (folder / CA_FILE).write_bytes(ca_pem)  # a certificate is public
    return Secrets(
        ca_file=folder / CA_FILE,
        keystore=folder / KEYSTORE,
        keystore_password=_read_secret(folder / KEYSTORE_PASSWORD_FILE),
        password_file=folder / PASSWORD_FILE,
        password=_read_secret(folder / PASSWORD_FILE),
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (0600 from its creation, whatever the umask)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # O_EXCL below: never write through an existing file (or a link) someone else made
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _read_secret(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def keytool_of(java: str) -> str:
    """The keytool next to this java (same JDK), else the one on PATH."""
    beside = Path(java).resolve().parent / "keytool"
    if beside.is_file():
        return str(beside)
    found = shutil.which("keytool")
    if found is None:
        raise TlsError(f"no keytool next to {java} nor on PATH (it comes with every JDK)")
    return found


def make_certificates(java: str, keystore_password: str) -> tuple[bytes, bytes]:
    """A new CA and a broker certificate signed by it: (the CA's certificate as PEM, the broker's PKCS12
    keystore holding its key and chain, protected by keystore_password)."""
    keytool = [keytool_of(java), *_QUICK_JVM]
    with tempfile.TemporaryDirectory(prefix="tools-broker-tls-") as scratch:  # mode 0700: ours alone
        work, broker = Path(scratch) / "work.p12", Path(scratch) / "broker.p12"
        store = ["-keystore", str(work), "-storetype", "PKCS12", "-storepass", keystore_password]
        key = ["-keyalg", "EC", "-groupname", "secp256r1", "-validity", VALIDITY_DAYS]
        _keytool(keytool + ["-genkeypair", *store, *key, "-alias", "ca",
                            "-dname", "CN=tools.broker throwaway CA (development only)",
                            "-ext", "bc:c=ca:true", "-ext", "ku:c=keyCertSign,cRLSign"])  # fmt: skip
        _keytool(keytool + ["-genkeypair", *store, *key, "-alias", "broker", "-signer", "ca", "-dname", "CN=localhost",
                            "-ext", "san=ip:127.0.0.1,dns:localhost", "-ext", "ku:c=digitalSignature",
                            "-ext", "eku=serverAuth,clientAuth"])  # fmt: skip
        # Both read the scratch keystore: run side by side.
        copy = _start(keytool + ["-importkeystore", "-srckeystore", str(work), "-srcstorepass", keystore_password,
                                 "-srcalias", "broker", "-destkeystore", str(broker), "-deststoretype", "PKCS12",
                                 "-deststorepass", keystore_password, "-noprompt"])  # fmt: skip
        ca_pem = _keytool(keytool + ["-exportcert", *store, "-alias", "ca", "-rfc"])
        _finish(copy)
        if b"BEGIN CERTIFICATE" not in ca_pem:
            raise TlsError(f"keytool -exportcert wrote no certificate: {ca_pem[:200]!r}")
        return ca_pem, broker.read_bytes()


def _start(argv: list[str]) -> subprocess.Popen:
    # The keystore password is on keytool's command line for the second or two it runs, in a folder only we
    # can read: it protects a keystore that is itself mode 0600 (and is no password a client uses).
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> bytes:
    command = proc.args[len(_QUICK_JVM) + 1] if isinstance(proc.args, list) else "?"  # -genkeypair, ...
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TlsError(f"keytool did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        said = (err or out).decode(errors="replace").strip().splitlines()
        raise TlsError(f"keytool {command!s} failed (exit {proc.returncode}): "
                       f"{said[-1] if said else 'no output'}")
    return out


def _keytool(argv: list[str]) -> bytes:
    return _finish(_start(argv))
