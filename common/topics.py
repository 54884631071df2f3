"""The pipeline's topics: edit a constant here to rename a topic everywhere.

Every record's key is the ride's ride_id (UTF-8); every value is a UTF-8 JSON object (common.schemas).
"""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError, for_code

from common.settings import Settings

log = logging.getLogger(__name__)

RIDE_DETAILS = "ride_details"      # rides.py -> transaction.py
RIDE_CONFIRMED = "ride_confirmed"  # transaction.py -> email.py, analysis.py
RIDE_REJECTED = "ride_rejected"    # transaction.py: requests that cannot be served, with the reason
DLQ_SUFFIX = ".dlq"                # unreadable or invalid records of topic T are set aside in T.dlq


def dead_letter_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


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
    if not missing:
        return
    response = admin.create_topics(
        {t: {"num_partitions": p, "replication_factor": -1} for t, p in missing.items()},
        raise_errors=False,
    )
    for result in response["topics"]:
        error = for_code(result["error_code"])
        # Another script may have created it a moment ago: that is success too.
        if error.errno != 0 and error is not TopicAlreadyExistsError:
            raise error(f"cannot create topic {result['name']}: {result.get('error_message')}")
    admin.wait_for_topics(list(missing))
    log.info("created topics %s", ", ".join(sorted(missing)))
