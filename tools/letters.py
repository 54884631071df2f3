"""A record read back from a dead-letter topic: its dlq.* headers parsed, and what is wrong with them.

Only the dead-letter tool reads letters back (`python -m tools.dlq`); the scripts write them with
common.dead_letters, which names the headers.
"""

from __future__ import annotations

from dataclasses import dataclass

from kafka.consumer.fetcher import ConsumerRecord

from common.dead_letters import (
    FAILED_AT,
    GROUP,
    OUR_HEADERS,
    REASON,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    TRUNCATED,
)
from common.topics import DLQ_SUFFIX

# Bounds of the numeric headers: a partition is an int32, an offset an int64, a time at most 9999-12-31,
# a record's size an int32.
_MAX = {SOURCE_PARTITION: 2**31 - 1, SOURCE_OFFSET: 2**63 - 1, FAILED_AT: 253_402_300_799_999, TRUNCATED: 2**31 - 1}
_REQUIRED = (REASON, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, GROUP, FAILED_AT)


@dataclass(frozen=True)
class DeadLetter:
    """A record read back from a dead-letter topic, and what is wrong with its dlq.* headers, if anything.

    Anyone who can write to a dead-letter topic can write any headers: parse() never fails, it lists the
    problems instead, and a letter with problems is shown but never replayed. Text fields keep bytes that
    are not UTF-8 as lone surrogates (tools.dlq.escape shows them as \\xNN); they are never shown raw.
    """

    record: ConsumerRecord
    reason: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    group_id: str
    failed_at_ms: int | None
    problems: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return not self.problems

    @classmethod
    def parse(cls, record: ConsumerRecord) -> DeadLetter:
        found: dict[str, bytes] = {}
        problems: list[str] = []
        for k, v in record.headers or []:
            if k in OUR_HEADERS:
                if k in found:
                    problems.append(f"{k} appears more than once")
                found[k] = v or b""
        if not found:
            return cls(record, "", "", None, None, "", None, ("no dlq.* headers: not set aside by a pipeline script",))
        problems += [f"no {name}" for name in _REQUIRED if name not in found]
        text = {name: _text(name, raw, problems) for name, raw in found.items()}
        number = {name: _number(name, text.get(name), problems) for name in _MAX}
        # A dead letter of T.dlq comes from T: a header saying otherwise is wrong, whoever wrote it.
        derived = record.topic.removesuffix(DLQ_SUFFIX)
        if SOURCE_TOPIC in text and text[SOURCE_TOPIC] != derived:
            problems.append(f"{SOURCE_TOPIC} is {text[SOURCE_TOPIC][:100]}, not {derived}")
        if number[TRUNCATED] is not None:
            problems.append(f"truncated when set aside (the original value was {number[TRUNCATED]} bytes): "
                            f"not the original record")
        return cls(
            record=record,
            reason=text.get(REASON, ""),
            source_topic=text.get(SOURCE_TOPIC, ""),
            source_partition=number[SOURCE_PARTITION],
            source_offset=number[SOURCE_OFFSET],
            group_id=text.get(GROUP, ""),
            failed_at_ms=number[FAILED_AT],
            problems=tuple(problems),
        )

    def original_headers(self) -> list[tuple[str, bytes]]:
        return [(k, v) for k, v in (self.record.headers or []) if k not in OUR_HEADERS]


def _text(name: str, raw: bytes, problems: list[str]) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        problems.append(f"{name} is not UTF-8")
        return raw.decode(errors="surrogateescape")


def _number(name: str, text: str | None, problems: list[str]) -> int | None:
    """A header holding a whole number from 0 (1 for a time) to its bound; None, and a problem, otherwise."""
    if text is None:  # missing: a problem already if it is required
        return None
    lowest = 1 if name == FAILED_AT else 0
    if text.isascii() and text.isdigit() and lowest <= int(text) <= _MAX[name]:  # isdigit alone takes "٣"
        return int(text)
    what = "a time (ms since the epoch, up to 9999-12-31)" if name == FAILED_AT else f"a number from 0 to {_MAX[name]}"
    problems.append(f"{name} is not {what}: {text[:40]}")
    return None
