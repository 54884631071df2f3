"""Delivering an email: into an outbox folder (one .eml file per ride) or through an SMTP server, with
retries for what is temporary and a clear refusal (Refused) for what is not.

email.py renders the message (with POLICY, below); this module only moves it, and never decides what to send.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import smtplib
import ssl
from collections.abc import Callable
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import EmailPolicy
from email.policy import default as default_policy
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from common.errors import Fatal, PoisonRecord, Stopped
from common.schemas import EMAIL_PATTERN, one_line

log = logging.getLogger(__name__)

DEFAULT_FROM = "Rides <rides@rides.example>"
# What a transport raises when the server or the connection fails (deliveries retry it).
TRANSPORT_ERRORS = (smtplib.SMTPException, OSError)


class _HeaderClasses(HeaderRegistry):
    """The default policy's header factory, minus its two costs: a header class is built once per header
    name (not per header), and the few values that recur (From, Content-Type...) are parsed once."""

    @functools.cache  # noqa: B019 (one registry for the process's life)
    def __getitem__(self, name: str) -> type[BaseHeader]:
        return super().__getitem__(name)

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def __call__(self, name: str, value: str) -> BaseHeader:
        return super().__call__(name, value)


class _StoredAsGiven(EmailPolicy):
    """email.policy.default, storing an ASCII header value as given (refused if it holds a line break, as
    default does) instead of parsing it: it is parsed only if it is read back, and written as is unless a
    line is longer than max_line_length, when the generator folds it through the header factory (as default
    does with a header read from a file). Anything else is parsed as default does (non-ASCII text needs its
    encoded words). recipients() reads the To line back the way a client does."""

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if not isinstance(value, str) or not value.isascii():
            return super().header_store_parse(name, value)
        if len(value.splitlines()) > 1:
            raise ValueError("Header values may not contain linefeed or carriage return characters")
        return name, value


# The policy email.py renders with: the same bytes as email.policy.default (tests/unit/test_email_properties.py).
POLICY = _StoredAsGiven(header_factory=_HeaderClasses())


@functools.lru_cache(maxsize=8)  # one sender per run
def as_written(name: str, value: str) -> str | BaseHeader:
    """What to store for a header that is the same in every email (From): the value itself if default
    writes it unchanged (then it is not folded again per email), else the header default parses."""
    header = POLICY.header_factory(name, value)
    return value if value.isascii() and header.fold(policy=POLICY) == f"{name}: {value}\n" else header


# One To line holding one dot-atom addr-spec (common.schemas.Email), and no RFC 2047 encoded word ("=?").
_PLAIN_TO = re.compile(rb"To: (" + EMAIL_PATTERN.strip("^$").encode() + rb")\r?\n")


def recipients(message: EmailMessage) -> list[str]:
    """The To addresses as a mail server or client reads them: the header as it is written into the
    email's bytes, parsed back, so that an RFC 2047 encoded word or a comma decoded there counts, not only
    what we meant to write. (The header alone: parsing the whole email back would halve render's speed.)
    A line holding one plain addr-spec alone reads as itself (RFC 5322's dot-atom; checked against the
    parser in test_email_properties.py) and skips the parser, which costs more than the rest of render()."""
    wire = b"".join(message.policy.fold_binary(k, v) for k, v in message.raw_items() if k.lower() == "to")
    plain = _PLAIN_TO.fullmatch(wire)
    if plain and b"=?" not in wire:
        return [plain[1].decode()]
    parsed = BytesHeaderParser(policy=default_policy).parsebytes(wire).get_all("To", [])
    return [a.addr_spec for header in parsed for a in header.addresses]


@functools.lru_cache(maxsize=8)  # one sender per run: parsed once, not per email
def domain_of(address: str) -> str:
    return parseaddr(address)[1].rpartition("@")[2]


def eml_name(ride_id: UUID) -> str:
    return f"{ride_id}.eml"


def write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never half an email: write aside, then rename. The
    file aside is named after this process (another email.py of the group may write the same ride during
    a rebalance): a third cheaper than tempfile.mkstemp's random name, and as private (0600: personal data).
    Unbuffered os calls: four system calls a file, where open() adds an fstat, an ioctl and an lseek."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:  # a write may take less than all of it
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Outbox:
    """Delivery without a mail server: one .eml file per ride, replaced (not duplicated) on a resend."""

    resend_replaces = True  # a resend rewrites the same file with the same bytes: never a second email

    def __init__(self, directory: Path) -> None:
        self.directory, self.where = directory, f" into {directory}/"
        directory.mkdir(parents=True, exist_ok=True)

    def deliver(self, message: EmailMessage, ride_id: UUID) -> str:
        path = self.directory / eml_name(ride_id)
        write_atomically(path, bytes(message))
        return str(path)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass


class SmtpSettings(BaseSettings):
    """Where email.py's emails go over SMTP (mixed into its settings): none of it set, into the outbox."""

    # The SMTP settings are read from the usual SMTP_* variables (aliases after the field's own name).
    smtp_host: str | None = Field(None, min_length=1, validation_alias=AliasChoices("smtp_host", "SMTP_HOST"),
                                  description="SMTP server (default: none: write to the outbox)")
    smtp_port: int = Field(587, ge=1, le=65535, validation_alias=AliasChoices("smtp_port", "SMTP_PORT"),
                           description="SMTP port (465: implicit TLS)")
    smtp_user: str | None = Field(None, validation_alias=AliasChoices("smtp_user", "SMTP_USER"),
                                  description="SMTP login (default: none: no login)")
    smtp_password: SecretStr | None = Field(
        None, validation_alias=AliasChoices("smtp_password", "SMTP_PASSWORD"),
        description="SMTP password (prefer the variable: flags show in ps)")
    smtp_from: str = Field(DEFAULT_FROM, validation_alias=AliasChoices("smtp_from", "SMTP_FROM"),
                           json_schema_extra={"metavar": "ADDRESS"}, description="the emails' sender")
    # Off: a password goes only over TLS. On: also in clear, for a local test server without TLS.
    smtp_allow_plain_login: bool = Field(
        False, validation_alias=AliasChoices("smtp_allow_plain_login", "SMTP_ALLOW_PLAIN_LOGIN"),
        description="log in even where the server offers no TLS, sending the password in clear: for a local "
                    "test server only (default: off)")

    @field_validator("smtp_from")
    @classmethod
    def _an_address(cls, value: str) -> str:
        _, address = parseaddr(value)
        if "@" not in address:
            raise ValueError(f"not an email address: {value!r}")
        return value


class Smtp:
    """Delivery through an SMTP server, over one connection kept open between emails."""

    resend_replaces = False  # each delivery is a real email: a resend reaches the rider twice

    def __init__(self, settings: SmtpSettings) -> None:
        self.host, self.port = settings.smtp_host or "", settings.smtp_port
        self.where = f" through smtp://{self.host}:{self.port}"
        self._user = settings.smtp_user
        self._password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        self._allow_plain_login = settings.smtp_allow_plain_login
        self._conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        if self.port == 465:  # implicit TLS ("SMTPS")
            conn: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=30, context=context)
            tls = True
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=30)
            conn.ehlo()
            tls = conn.has_extn("starttls")
            if tls:
                conn.starttls(context=context)
                conn.ehlo()
        if self._user and not tls and not self._allow_plain_login:
            conn.close()
            raise Fatal(f"the SMTP server {self.host}:{self.port} offers no STARTTLS: not sending the password "
                            f"of {self._user} in clear; use TLS (STARTTLS or port 465), or pass "
                            f"--smtp-allow-plain-login (SMTP_ALLOW_PLAIN_LOGIN=1) for a local test server")
        if self._user:
            conn.login(self._user, self._password or "")
        return conn

    def open(self) -> None:
        """Connect (and log in) now, so that a server that would get the password in clear stops the script
        before it reads a ride; an unreachable one raises SMTPException or OSError (deliveries retry it)."""
        if self._conn is None:
            self._conn = self._connect()

    def deliver(self, message: EmailMessage, ride_id: UUID) -> str:
        self.open()
        assert self._conn is not None
        try:
            # The envelope from the parsed To header render() checked, never from smtplib's own reading.
            self._conn.send_message(message, to_addrs=recipients(message))
        except TRANSPORT_ERRORS:
            self.close()  # the next attempt starts on a fresh connection
            raise
        return f"smtp://{self.host}:{self.port}"

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.quit()
            except TRANSPORT_ERRORS:
                conn.close()


def transport_for(settings: SmtpSettings, outbox: Path) -> Outbox | Smtp:
    """SMTP if settings.smtp_host is set, else the outbox; SMTP connects (and logs in) at once, so that a
    configuration that cannot work stops the script before a ride is read (Fatal)."""
    if not settings.smtp_host:
        return Outbox(outbox)
    smtp = Smtp(settings)
    try:
        smtp.open()
    except TRANSPORT_ERRORS as e:
        log.warning("the SMTP server is not reachable yet (%s: %s); each email retries it", type(e).__name__, e)
    return smtp


class Refused(PoisonRecord):
    """The server refused this email for good (5xx): retrying cannot help, the ride is set aside."""


def refused_for_good(error: Exception) -> str | None:
    """Why the server refused this one email for good (5xx to its recipient, or to its DATA), else None.
    A 4xx is temporary, and a refused sender or login is the configuration's: those are retried, then stop."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes: list[tuple[int, bytes | str]] = list(error.recipients.values())
    elif isinstance(error, smtplib.SMTPDataError):
        codes = [(error.smtp_code, error.smtp_error)]
    else:
        return None
    if not codes or any(code < 500 for code, _ in codes):
        return None
    return "; ".join(f"{code} {text.decode(errors='replace') if isinstance(text, bytes) else text}"
                     for code, text in codes)


def deliver_with_retries(
    deliver: Callable[[EmailMessage, UUID], str],
    message: EmailMessage,
    ride_id: UUID,
    sleep: Callable[[float], bool],
    attempts: int = 4,
    first_delay: float = 1.0,
    tell: Callable[[str], None] | None = None,
) -> str:
    """deliver(), retried with backoff (1, 2, 4 s); raises Fatal once every attempt has failed.

    sleep(seconds) returns True when asked to stop meanwhile (Shutdown.sleep), which raises Stopped.
    tell(result), if given, hears each attempt's: delivered, retried, refused or failed (the metrics).
    """
    tell = tell or (lambda _result: None)
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            to = deliver(message, ride_id)
            tell("delivered")
            return to
        except TRANSPORT_ERRORS as e:
            if why := refused_for_good(e):
                tell("refused")
                raise Refused(one_line(f"the mail server refused the email to {message['To']}: {why}")) \
                    from None
            error: Exception = e
        tell("failed" if attempt == attempts else "retried")
        if attempt == attempts:
            raise Fatal(
                f"cannot deliver the email for ride {ride_id} after {attempts} attempts "
                f"({type(error).__name__}: {error}); stopping without committing: it and the rides after it "
                f"are emailed when email.py runs again"
            )
        log.warning("ride %s: delivery failed (%s: %s); retry %d of %d in %.0f s",
                    ride_id, type(error).__name__, error, attempt, attempts - 1, delay)
        if sleep(delay):
            raise Stopped()
        delay *= 2
    raise AssertionError("unreachable")
