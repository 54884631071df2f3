"""The pipeline's topics: edit a constant here to rename a topic everywhere.

Every record's key is the ride's ride_id (UTF-8); every value is a UTF-8 JSON object (common.schemas).
Names and partition counts only: common.clients creates the topics.
"""

from __future__ import annotations

RIDE_DETAILS = "ride_details"      # rides.py -> transaction.py
RIDE_CONFIRMED = "ride_confirmed"  # transaction.py -> email.py, analysis.py
RIDE_REJECTED = "ride_rejected"    # transaction.py: requests that cannot be served, with the reason
RIDE_STATS = "ride_stats"          # analysis.py -> api.py: the latest statistics per analysis group (compacted)
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
    RIDE_STATS: 1,
}
# Topic settings other than the broker's defaults. ride_stats keeps the latest snapshot per key (the analysis
# group) forever, and nothing older: a reader that starts any time later finds the current statistics at once.
# Its segments roll every 10 minutes and are compacted once a tenth of them is stale, so that what a reader
# replays at start stays small (a snapshot a second would otherwise pile up in one open 1 GiB segment for days).
CONFIGS = {
    RIDE_STATS: {"cleanup.policy": "compact", "segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"},
}
