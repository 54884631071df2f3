"""The pipeline's topics: edit a constant here to rename a topic everywhere.

Every record's key is the ride's ride_id (UTF-8); every value is a UTF-8 JSON object (common.schemas).
"""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import InvalidReplicationFactorError, KafkaTimeoutError, TopicAlreadyExistsError, for_code

from common.settings import Settings

log = logging.getLogger(__name__)

RIDE_DETAILS = "ride_details"      # rides.py -> transaction.py
RIDE_CONFIRMED = "ride_confirmed"  # transaction.py -> email.py, analysis.py
RIDE_REJECTED = "ride_rejected"    # transaction.py: requests that cannot be served, with the reason
DLQ_SUFFIX = ".dlq"                # unreadable or invalid records of topic T are set aside in T.dlq
# transaction.py's memory of decided rides (common.decided), one per consumer group: "<group>-decided-changelog".
DECIDED_SUFFIX = "-decided-changelog"


def dead_letter_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


def decided_topic(group_id: str) -> str:
    return group_id + DECIDED_SUFFIX


# Partitions bound how many instances of a consumer can share the work; six lets a few transaction.py
# instances scale out on a laptop. Dead letters are rare and read by people, in order: one partition.
PARTITIONS = {
    RIDE_DETAILS: 6,
    RIDE_CONFIRMED: 6,
    RIDE_REJECTED: 3,
    dead_letter_topic(RIDE_DETAILS): 1,
    dead_letter_topic(RIDE_CONFIRMED): 1,
}


def ensure_topics(admin: KafkaAdminClient, settings: Settings, names: list[str] | None = None) -> None:
    """Create the pipeline's topics that do not exist yet; safe to call from every script at start."""
    wanted = {settings.topic(n): PARTITIONS[n] for n in (names or PARTITIONS)}
    existing = set(admin.list_topics())
    missing = {t: p for t, p in wanted.items() if t not in existing}
    if missing:
        _create(admin, {t: {"num_partitions": p, "replication_factor": -1} for t, p in missing.items()})


def ensure_decided_topic(admin: KafkaAdminClient, settings: Settings, group_id: str, retention_ms: int) -> str:
    """Create transaction.py's changelog of decided rides if missing; returns its name.

    It has as many partitions as ride_details: partition p holds the decisions of the rides read from
    partition p, so the instance that owns p restores exactly p. Each record lists the rides of one batch,
    and no ride is written twice, so compaction would remove nothing: old batches are deleted by time
    instead, once they are older than the window the state keeps (hence the retention).
    """
    source, topic = settings.topic(RIDE_DETAILS), settings.topic(decided_topic(group_id))
    existing = [t for t in (source, topic) if t in set(admin.list_topics())]
    counts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(existing)}
    if source not in counts:
        raise ValueError(f"{source} does not exist")
    configs = {
        "cleanup.policy": "delete",
        "retention.ms": str(retention_ms),
        # Delete in steps of an hour at most, rather than in whole default segments of a week.
        "segment.ms": str(min(retention_ms, 3_600_000)),
    }
    if topic not in counts:
        _create(admin, {topic: {"num_partitions": counts[source], "replication_factor": -1, "configs": configs}})
    elif counts[topic] != counts[source]:
        raise ValueError(f"{topic} has {counts[topic]} partitions and {source} {counts[source]}: they must match "
                         f"(partition p remembers the rides of partition p); delete {topic} to start it afresh")
    else:  # the window may have changed since the topic was created (--dedup-hours): keep the disk in step
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)])
    return topic


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
            # replication factor asked for is the cluster's default, so that is a pause: retried (connect).
            raise KafkaTimeoutError(message)
        raise error(message)
    admin.wait_for_topics(list(specs))
    log.info("created topics %s", ", ".join(sorted(specs)))
