"""One settings object per script, built once from its command-line flags and the environment.

A flag beats an environment variable, which beats the default. The only environment variables read are
KAFKA_BOOTSTRAP_SERVERS and, for each flag `--some-flag`, RIDES_SOME_FLAG (SMTP settings are read by
email.py's own subclass). Nothing else in the project reads os.environ.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BOOTSTRAP_SERVERS = "localhost:9092"


class Settings(BaseSettings):
    """What every script needs: where Kafka is and how long to wait for it."""

    model_config = SettingsConfigDict(env_prefix="RIDES_", frozen=True, extra="forbid")

    bootstrap_servers: str = Field(
        DEFAULT_BOOTSTRAP_SERVERS,
        min_length=1,
        validation_alias=AliasChoices("bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    # Prepended to every topic name: lets tests (or several people on one cluster) run the pipeline
    # side by side without touching each other's topics. Empty in normal use.
    topic_prefix: str = Field("", pattern=r"^[A-Za-z0-9._-]*$", max_length=100)
    # Seconds to keep retrying when Kafka is unreachable at start before giving up with an error.
    wait: float = Field(60.0, ge=0)
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    def topic(self, name: str) -> str:
        """The real name of one of the topics in common.topics, with this run's prefix."""
        return self.topic_prefix + name


class ConsumerSettings(Settings):
    """What every consuming script needs on top: its consumer group."""

    group_id: str = Field(min_length=1, max_length=200)
