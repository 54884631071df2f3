"""One settings object per script, built once from its flags, the environment and a `.env` file.

Each option is declared once, as a field: its type, limits, default and help (`description`). common.cli
turns the fields into the script's flags (`--some-flag`). A flag beats an environment variable, which beats
a line of `.env` in the current directory, which beats the default. The variables read are RIDES_SOME_FLAG
for each flag, and the standard names given as a field's aliases instead (KAFKA_BOOTSTRAP_SERVERS, email.py's
SMTP_*). Nothing else in the project reads os.environ.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.topics import decided_topic

DEFAULT_BOOTSTRAP_SERVERS = "localhost:9092"

# A consumer group: ConsumerSettings' subclasses give it their own default (`group_id: GroupId = "email"`). Only
# its flag changes it: one RIDES_GROUP_ID (or .env line) would put all consumers in one group.
GroupId = Annotated[str, Field(min_length=1, max_length=200, description="consumer group",
                               json_schema_extra={"flag_only": True})]  # see common.cli.load


class Settings(BaseSettings):
    """What every script needs: where Kafka is and how long to wait for it."""

    model_config = SettingsConfigDict(
        env_prefix="RIDES_",
        env_file=".env",
        # One .env serves every script: a line meant for another script's settings is not an error here.
        # (A mistyped flag still is: the flags are checked by argparse, not by this.)
        dotenv_filtering="only_existing",
        frozen=True,
        extra="forbid",
    )

    # The first alias is the field's own name (flags and keyword arguments); the others are environment
    # variables, read without the RIDES_ prefix.
    bootstrap_servers: str = Field(
        DEFAULT_BOOTSTRAP_SERVERS, min_length=1, description="Kafka brokers",
        validation_alias=AliasChoices("bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS"),
        json_schema_extra={"metavar": "HOST:PORT[,...]"},
    )
    wait: float = Field(60.0, ge=0, json_schema_extra={"metavar": "SECONDS"},
                        description="how long to keep retrying while Kafka is unreachable at start")
    # Lets tests (or several people on one cluster) run the pipeline side by side without touching each
    # other's topics. Empty in normal use.
    topic_prefix: str = Field("", pattern=r"^[A-Za-z0-9._-]*$", max_length=100, json_schema_extra={"metavar": "PREFIX"},
                              description="prepended to every topic name, to run side by side on one cluster")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG also shows kafka-python's logs and tracebacks")
    # How to reach a secured cluster (a managed service: SASL_SSL with a login; mTLS: SSL with a client
    # certificate). The password never comes from a flag (any user sees a command line in `ps`).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how to talk to Kafka: SSL (TLS), SASL_SSL (TLS and a login: most managed services), "
                                 "SASL_PLAINTEXT (a login without TLS), PLAINTEXT")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="the SASL login's mechanism, with SASL_SSL or SASL_PLAINTEXT")
    sasl_username: str | None = Field(None, min_length=1, json_schema_extra={"metavar": "USER"},
                                      description="the SASL login's user name (default: none)")
    sasl_password: SecretStr | None = Field(
        None, min_length=1, json_schema_extra={"env_only": True},
        description="the SASL login's password: environment or .env only, never a flag (default: none)")
    sasl_password_file: Path | None = Field(None, json_schema_extra={"metavar": "PATH"},
                                            description="a file holding the SASL password (default: none)")
    ssl_cafile: Path | None = Field(None, json_schema_extra={"metavar": "PEM"},
                                    description="the CA certificate(s) the brokers' certificates are checked against "
                                                "(default: the system's)")
    ssl_certfile: Path | None = Field(None, json_schema_extra={"metavar": "PEM"},
                                      description="a client certificate, for brokers that require one (default: none)")
    ssl_keyfile: Path | None = Field(None, json_schema_extra={"metavar": "PEM"},
                                     description="the client certificate's private key (default: none)")
    _password: SecretStr | None = PrivateAttr(None)  # from sasl_password or the file, read once

    @model_validator(mode="after")
    def _security_is_complete(self) -> Settings:
        sasl, tls = self.security_protocol.startswith("SASL"), self.security_protocol.endswith("SSL")
        if not sasl and (self.sasl_username or self.sasl_password or self.sasl_password_file):
            raise ValueError(f"a SASL login is set but --security-protocol is {self.security_protocol}: use SASL_SSL "
                             f"(or SASL_PLAINTEXT)")
        if not tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise ValueError(f"TLS files are set but --security-protocol is {self.security_protocol}: use SSL or "
                             f"SASL_SSL")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("--ssl-keyfile is the key of a client certificate: give --ssl-certfile too")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_password_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"--{name.replace('_', '-')}: no such file: {path}")
        if sasl:
            if not self.sasl_username:
                raise ValueError(f"--security-protocol {self.security_protocol} needs --sasl-username")
            if self.sasl_password is not None and self.sasl_password_file is not None:
                raise ValueError("the password is in both RIDES_SASL_PASSWORD and --sasl-password-file: keep one")
            if self.sasl_password is None and self.sasl_password_file is None:
                raise ValueError(f"--security-protocol {self.security_protocol} needs the password in one of "
                                 f"RIDES_SASL_PASSWORD or --sasl-password-file")
            if self.sasl_password_file is not None:
                try:
                    text = self.sasl_password_file.read_text(encoding="utf-8").rstrip("\r\n")
                except (OSError, UnicodeDecodeError) as e:
                    raise ValueError(f"--sasl-password-file: cannot read {self.sasl_password_file}: {e}") from None
                if not text:
                    raise ValueError(f"--sasl-password-file: {self.sasl_password_file} is empty")
                self._password = SecretStr(text)
            else:
                self._password = self.sasl_password
        return self

    @property
    def password(self) -> str | None:
        """The SASL password, for the clients alone (never logged: the settings show it as '**********')."""
        return None if self._password is None else self._password.get_secret_value()

    def topic(self, name: str) -> str:
        """The real name of one of the topics in common.topics, with this run's prefix."""
        return self.topic_prefix + name


class ServiceSettings(Settings):
    """What every long-running script (the four of the pipeline) takes on top: where it serves its metrics
    and health (common.metrics)."""

    metrics_port: int | None = Field(
        None, ge=0, le=65535, json_schema_extra={"metavar": "PORT"},
        description="serve /metrics (Prometheus) and /healthz on this port; 0 picks a free one and logs it "
                    "(default: off)")
    metrics_host: str = Field("127.0.0.1", min_length=1, json_schema_extra={"metavar": "HOST"},
                              description="the address --metrics-port listens on (0.0.0.0: every interface)")


class ConsumerSettings(ServiceSettings):
    """What every consuming script needs on top: its consumer group (a subclass gives the default)."""

    group_id: GroupId


class TransformSettings(ConsumerSettings):
    """A consume-transform-produce script's (common.transform): its guarantee, its instance, and how long a
    decided ride_id is remembered."""

    guarantee: Literal["exactly-once", "at-least-once"] = Field(
        "exactly-once", description="exactly-once: Kafka transactions; at-least-once: flush, then commit (faster; "
                                    "a crash may publish a batch twice)")
    dedup_hours: float = Field(24.0, gt=0, le=24 * 30, json_schema_extra={"metavar": "H"},
                               description="how long a decided ride_id is remembered; a request repeated later is "
                                           "decided again")
    instance: str = Field("0", min_length=1, max_length=50, pattern=r"^[A-Za-z0-9._-]+$",
                          json_schema_extra={"metavar": "ID"},
                          description="this instance's name, unique among running instances: the "
                                      "transactional.id is <topic prefix><group id>-<ID>; two instances with the "
                                      "same ID fence each other")

    @model_validator(mode="after")
    def _changelog_name_is_a_topic_name(self) -> TransformSettings:
        name = self.topic(decided_topic(self.group_id))  # the group names the changelog of decided rides
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name):
            raise ValueError(f"with this --group-id and --topic-prefix the changelog topic would be {name[:80]!r}: "
                             f"a topic name has at most 249 of A-Z a-z 0-9 . _ -")
        return self

    @property
    def dedup_window_ms(self) -> int:
        return round(self.dedup_hours * 3_600_000)

    @property
    def transactional_id(self) -> str:
        return f"{self.topic_prefix}{self.group_id}-{self.instance}"


class ApiSettings(ServiceSettings):
    """api.py's: where it serves HTTP, how long a POST waits for Kafka, and what its view of the rides keeps."""

    host: str = Field("127.0.0.1", min_length=1, json_schema_extra={"metavar": "HOST"},
                      description="the address to serve HTTP on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, json_schema_extra={"metavar": "PORT"},
                      description="the port to serve HTTP on; 0 picks a free one (logged with the URL)")
    ack_timeout: float = Field(5.0, ge=1, le=60, json_schema_extra={"metavar": "SECONDS"},
                               description="how long POST /rides waits for Kafka to acknowledge a ride before it "
                                           "answers 503 (the producer gives up on the ride by then too)")
    history_minutes: float = Field(60.0, ge=0, le=7 * 24 * 60, json_schema_extra={"metavar": "MINUTES"},
                                   description="at start, read the rides of the last MINUTES into the view, so that "
                                               "GET /rides/{id} knows them")
    view_rides: int = Field(100_000, ge=100, le=10_000_000, json_schema_extra={"metavar": "N"},
                            description="the most rides the view keeps (the oldest are forgotten first)")
    groups: str = Field("transaction,email,analysis", pattern=r"^[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*$",
                        json_schema_extra={"metavar": "G1,G2,..."},
                        description="the consumer groups whose lag the live page shows")

    @property
    def lag_groups(self) -> list[str]:
        return self.groups.split(",")
