"""Look into a dead-letter topic (or any topic), and replay chosen dead letters to their source topic.

    python -m tools.dlq list ride_details.dlq [--limit N] [--offsets 3,5-9] [--json]
    python -m tools.dlq replay ride_details.dlq --offsets 3,5-9    (or --all)
    python -m tools.dlq show ride_rejected [--partition N] [--offsets 3,5-9] [--limit N] [--json]

For list and replay, TOPIC is a dead-letter topic (`ride_details.dlq`) or its source topic
(`ride_details`: `.dlq` is appended); for show, any topic. Names are as in common.topics:
--topic-prefix is prepended, as for every script.

Every command reads from the beginning with no consumer group: looking commits nothing and disturbs no
one. They read committed records only, so that a dead letter whose transaction transaction.py aborted
(and then wrote again) is not listed twice. Nothing read is printed raw: control characters, escape
sequences and bytes that are not UTF-8 are shown escaped.

Replaying sends each chosen dead letter's original key, value and headers to the topic its dead-letter
topic was derived from (ride_details.dlq -> ride_details, same prefix; only the pipeline's own), once per
source record even when several consumer groups set it aside (email.py and analysis.py both read
ride_confirmed): run it after the cause is fixed, and only once, since every replay sends the records
again to every group. A letter whose dlq.* headers are missing, malformed or point elsewhere, or that was
truncated to fit Kafka's size limit (dlq.truncated), is listed with what is wrong and never replayed.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CorruptRecordError

from common import cli, clients, topics
from common.settings import Settings
from common.shutdown import Shutdown
from common.topics import DLQ_SUFFIX, dead_letter_topic
from tools.letters import DeadLetter

log = logging.getLogger(__name__)

PROG = "python -m tools.dlq"
PREVIEW_CHARS = 60  # of a key or value in a listing: enough to recognise a record, short enough for one line
REASON_CHARS = 300  # reasons are one line of at most 500 characters (common.schemas.describe); keep lines readable
# Reading stops once every chosen partition is read to its end; this long without a record means the
# broker stopped answering, which is an error, not an empty topic.
STALL_SECONDS = 30.0


# ----------------------------------------------------------------------------------- pure functions


@dataclass(frozen=True)
class Offsets:
    """A selection of offsets such as `3,5-9,20-` (inclusive ranges; `N-` means from N to the end)."""

    ranges: tuple[tuple[int, int | None], ...]

    def __contains__(self, offset: int) -> bool:
        return any(lo <= offset and (hi is None or offset <= hi) for lo, hi in self.ranges)

    @property
    def last(self) -> int | None:
        """The highest offset chosen, or None when the selection runs to the end."""
        if any(hi is None for _, hi in self.ranges):
            return None
        return max(hi for _, hi in self.ranges if hi is not None)

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}-{'' if hi is None else hi}" for lo, hi in self.ranges)


ALL = Offsets(((0, None),))


def parse_offsets(text: str) -> Offsets:
    """`3,5-9,20-` -> Offsets; ValueError with a one-line reason for anything else."""
    ranges: list[tuple[int, int | None]] = []
    for part in text.split(","):
        part = part.strip()
        lo_text, dash, hi_text = part.partition("-")
        try:
            lo = _offset(lo_text)
            hi = (_offset(hi_text) if hi_text.strip() else None) if dash else lo
        except ValueError:
            raise ValueError(f"{part!r} is not an offset (N), a range (N-M) or an open range (N-)") from None
        if hi is not None and hi < lo:
            raise ValueError(f"{part!r}: the range ends before it starts")
        ranges.append((lo, hi))
    return Offsets(tuple(ranges))


def _offset(text: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit():  # also refuses "-3", "+3", "1e3", "٣"
        raise ValueError(text)
    return int(text)


def dead_letter_name(topic: str) -> str:
    """The dead-letter topic meant by a command-line TOPIC: itself, or the source topic's `.dlq`."""
    return topic if topic.endswith(DLQ_SUFFIX) else dead_letter_topic(topic)


# The pipeline's topics that have a dead-letter topic (common.topics): the only ones replay writes to.
REPLAYABLE = sorted(t.removesuffix(DLQ_SUFFIX) for t in topics.PARTITIONS if t.endswith(DLQ_SUFFIX))


def replay_source(topic: str) -> str:
    """The source topic a command-line TOPIC replays into (unprefixed); ValueError unless it is one of the
    pipeline's dead-letter topics: a replay never writes into any other topic."""
    source = dead_letter_name(topic).removesuffix(DLQ_SUFFIX)
    if source not in REPLAYABLE:
        allowed = ", ".join(dead_letter_topic(t) for t in REPLAYABLE)
        raise ValueError(f"replay reads only the pipeline's dead-letter topics ({allowed}) and writes only into "
                         f"their source topic; {escape(topic)} is not one of them")
    return source


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape(text: str) -> str:
    """Text safe for one terminal line: control characters, escape sequences, bidi overrides and other
    non-printable characters become visible escapes instead of acting on the terminal."""
    out = []
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c.isprintable():
            out.append(c)
        elif 0xDC80 <= ord(c) <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif ord(c) <= 0xFF:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) <= 0xFFFF:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out)


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def preview(data: bytes | None, limit: int = PREVIEW_CHARS) -> str:
    """A short, safe rendering of a key or value: UTF-8 where it is, `\\xNN` for bytes that are not."""
    if data is None:
        return "(null)"
    if not data:
        return "(empty)"
    # Decode only the start: a dead letter can be hundreds of KB. Four bytes per character at most, so
    # this prefix holds more than `limit` characters whenever the value does. surrogateescape keeps each
    # invalid byte as one lone surrogate, which escape() renders as that byte.
    head = data[: limit * 4 + 4].decode("utf-8", errors="surrogateescape")
    return shorten(escape(head), limit)


def replay_plan(letters: list[DeadLetter]) -> tuple[list[DeadLetter], list[DeadLetter],
                                                   list[tuple[DeadLetter, DeadLetter]]]:
    """The dead letters to replay, the unusable ones (their headers are wrong: never replayed), and the
    (repeat, kept) pairs of the others.

    Every consumer group of a topic sets a record it cannot read aside on its own (email.py and
    analysis.py both read ride_confirmed): replaying each of those copies would deliver the record
    twice to every group.
    """
    kept: dict[tuple[str, int | None, int | None], DeadLetter] = {}
    send: list[DeadLetter] = []
    unusable: list[DeadLetter] = []
    repeats: list[tuple[DeadLetter, DeadLetter]] = []
    for letter in letters:
        source = (letter.source_topic, letter.source_partition, letter.source_offset)
        if not letter.usable:
            unusable.append(letter)
        elif source in kept:
            repeats.append((letter, kept[source]))
        else:
            kept[source] = letter
            send.append(letter)
    return send, unusable, repeats


def when(ms: int | None) -> str:
    """Milliseconds since the epoch as an ISO time in UTC, to the second; "-" when unknown, "?N" when no
    calendar has it (a record's timestamp is whatever its producer wrote)."""
    if ms is None or ms <= 0:
        return "-"
    try:
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"?{ms}"


def origin(letter: DeadLetter) -> str:
    if not letter.source_topic:
        return "?"
    part = "?" if letter.source_partition is None else letter.source_partition
    offset = "?" if letter.source_offset is None else letter.source_offset
    return escape(f"{shorten(letter.source_topic, 100)}[{part}]@{offset}")


def format_line(letter: DeadLetter) -> str:
    """One dead letter as one line: its offset, where it came from, when it was set aside, by whom, why,
    and what it holds."""
    r = letter.record
    size = len(r.value) if r.value is not None else 0
    line = (
        f"{r.offset}  {origin(letter)}  {when(letter.failed_at_ms)}  {shorten(escape(letter.group_id), 60) or '-'}  "
        f"{shorten(escape(letter.reason), REASON_CHARS) or '-'}  "
        f"key={preview(r.key, 40)}  value[{size} B]={preview(r.value)}"
    )
    if letter.problems:
        line += f"  unusable (never replayed): {shorten(escape('; '.join(letter.problems)), REASON_CHARS)}"
    return line


def format_json(letter: DeadLetter) -> str:
    """One dead letter as one JSON object (for scripts): the same facts, previews instead of raw bytes."""
    r = letter.record
    return json.dumps(
        {
            "offset": r.offset,
            "partition": r.partition,
            "source_topic": letter.source_topic,
            "source_partition": letter.source_partition,
            "source_offset": letter.source_offset,
            "failed_at": when(letter.failed_at_ms),
            "group": letter.group_id,
            "reason": letter.reason,
            "key": preview(r.key, 200),
            "value": preview(r.value, 200),
            "value_bytes": len(r.value) if r.value is not None else None,
            "headers": [k for k, _ in letter.original_headers()],
            "problems": list(letter.problems),
        },
        ensure_ascii=True,  # one line, and no raw control or bidi characters reach a terminal
    )


def format_record(r: ConsumerRecord) -> str:
    """Any topic's record as one line: where it is, when it was produced, its key, value and header names."""
    size = len(r.value) if r.value is not None else 0
    line = f"{r.topic}[{r.partition}]@{r.offset}  {when(r.timestamp)}  key={preview(r.key, 40)}  " \
           f"value[{size} B]={preview(r.value)}"
    if r.headers:
        line += f"  headers={shorten(escape(','.join(k for k, _ in r.headers)), PREVIEW_CHARS)}"
    return line


def _bytes_json(data: bytes | None) -> str | dict | None:
    """Bytes in JSON: the text when they are UTF-8, else {"base64": ...}, so that nothing is lost."""
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def format_record_json(r: ConsumerRecord) -> str:
    """Any topic's record, whole, as one JSON object (ASCII: no raw control character reaches a terminal)."""
    return json.dumps({
        "topic": r.topic, "partition": r.partition, "offset": r.offset,
        "timestamp": when(r.timestamp), "timestamp_ms": r.timestamp,
        "key": _bytes_json(r.key), "value": _bytes_json(r.value),
        "headers": [[k, _bytes_json(v)] for k, v in r.headers or []],
    }, ensure_ascii=True)


# ------------------------------------------------------------------------------------------- Kafka


def read(consumer: KafkaConsumer, topic: str, partition: int, chosen: Offsets,
         shutdown: Shutdown) -> Iterator[ConsumerRecord]:
    """The chosen records of one partition, from the beginning to the end it had when reading began."""
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.end_offsets([tp])[tp]  # read_committed: the last stable offset
    if chosen.last is not None:
        end = min(end, chosen.last + 1)
    position, last_progress = consumer.position(tp), time.monotonic()
    while position < end:
        if shutdown.requested:
            raise cli.Interrupted()
        try:
            records = consumer.poll(timeout_ms=500).get(tp, [])
        except CorruptRecordError as e:
            # kafka-python cannot decode a record it fetched (say, a header key that is not UTF-8, which any
            # client can write). Its position is that record's offset: name it, step over it, go on.
            bad = consumer.position(tp)
            log.warning("%s[%d]@%d cannot be read (%s); skipped", topic, partition, bad, escape(str(e)))
            consumer.seek(tp, bad + 1)
            continue
        # Progress is the position, not records: aborted records and transaction markers advance it
        # without returning anything.
        if consumer.position(tp) != position:
            position, last_progress = consumer.position(tp), time.monotonic()
        elif time.monotonic() - last_progress > STALL_SECONDS:
            raise cli.Fatal(f"{topic}[{partition}]: stuck for {STALL_SECONDS:.0f} s at offset {position} of "
                            f"{end}; is the broker still up?")
        for r in records:
            if r.offset >= end:
                return
            if r.offset in chosen:
                yield r


def read_letters(consumer: KafkaConsumer, topic: str, partition: int, chosen: Offsets, shutdown: Shutdown,
                 group: str | None = None) -> Iterator[DeadLetter]:
    """The chosen dead letters of one partition (of one consumer group's, if given), parsed: never failing."""
    for r in read(consumer, topic, partition, chosen, shutdown):
        letter = DeadLetter.parse(r)
        if group is None or letter.group_id == group:
            yield letter


def open_topic(settings: Settings, shutdown: Shutdown, name: str,
               partition: int | None) -> tuple[KafkaConsumer, str, list[int]]:
    """A reader of the topic `name` (prefix applied) and the partitions to read: `partition`, or all."""
    topic = settings.topic(name)
    consumer = clients.connect(settings, shutdown, lambda: clients.reader(settings, "rides-dlq"), "reading records")
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        consumer.close()
        raise cli.Fatal(f"topic {escape(topic)} does not exist at {settings.bootstrap_servers} (for a dead-letter "
                        f"topic: nothing was ever set aside there; or check the name and --topic-prefix)")
    if partition is not None and partition not in partitions:
        consumer.close()
        raise cli.Fatal(f"topic {escape(topic)} has no partition {partition} (it has {len(partitions)})")
    if partition is None:
        return consumer, topic, sorted(partitions)
    if len(partitions) > 1:
        log.info("%s has %d partitions; this is partition %d (--partition)", topic, len(partitions), partition)
    return consumer, topic, [partition]


def print_lines(lines: Iterator[str], limit: int | None) -> int:
    """Print lines until `limit`; returns how many. `... | head` is not an error: the reader has seen enough."""
    shown = 0
    try:
        for line in lines:
            if limit is not None and shown >= limit:
                break
            print(line, flush=True)
            shown += 1
    except BrokenPipeError:
        # Point stdout at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return shown


# ---------------------------------------------------------------------------------------- commands


def list_command(settings: Settings, args: argparse.Namespace, shutdown: Shutdown) -> int:
    consumer, topic, [partition] = open_topic(settings, shutdown, dead_letter_name(args.topic), args.partition)
    try:
        render: Callable[[DeadLetter], str] = format_json if args.json else format_line
        letters = read_letters(consumer, topic, partition, args.offsets or ALL, shutdown, args.group)
        shown = print_lines((render(letter) for letter in letters), args.limit)
    finally:
        consumer.close()
    log.info("%d dead letters listed from %s[%d]", shown, topic, partition)
    return 0


def show_command(settings: Settings, args: argparse.Namespace, shutdown: Shutdown) -> int:
    consumer, topic, partitions = open_topic(settings, shutdown, args.topic, args.partition)
    render = format_record_json if args.json else format_record
    shown = 0
    try:
        for partition in partitions:
            left = None if args.limit is None else args.limit - shown
            records = read(consumer, topic, partition, args.offsets or ALL, shutdown)
            shown += print_lines((render(r) for r in records), left)
    finally:
        consumer.close()
    log.info("%d records shown from %s%s", shown, topic, "" if args.partition is None else f"[{args.partition}]")
    return 0


def replay_command(settings: Settings, args: argparse.Namespace, shutdown: Shutdown) -> int:
    chosen = ALL if args.all else args.offsets
    try:
        target = settings.topic(replay_source(args.topic))
    except ValueError as e:
        raise cli.Fatal(str(e)) from None
    consumer, topic, [partition] = open_topic(settings, shutdown, dead_letter_name(args.topic), args.partition)
    try:
        letters = list(read_letters(consumer, topic, partition, chosen, shutdown, args.group))
        target_exists = bool(consumer.partitions_for_topic(target))
    finally:
        consumer.close()
    send, unusable, repeats = replay_plan(letters)
    for letter in unusable:
        log.warning("%s@%d is not replayed: %s", topic, letter.record.offset, escape("; ".join(letter.problems)))
    for letter, kept in repeats:
        log.info("%s@%d (group %s) is the same record as %s@%d: replayed once", topic, letter.record.offset,
                 escape(letter.group_id), topic, kept.record.offset)
    if not send:
        raise cli.Fatal(f"no dead letters at offsets {chosen} of {topic}[{partition}] to replay ({len(letters)} "
                        f"read, {len(unusable)} unusable); nothing replayed")
    if not target_exists:
        raise cli.Fatal(f"source topic {target} does not exist; nothing replayed")
    # The same producer as the pipeline's (idempotent, acks=all): a replayed record is written once.
    producer = clients.connect(settings, shutdown, lambda: clients.producer(settings, "rides-dlq-replay"),
                               "replaying dead letters")
    try:
        # Into the topic this dead-letter topic was derived from, never where a header says.
        futures = [(letter, producer.send(target, key=letter.record.key, value=letter.record.value,
                                          headers=letter.original_headers()))
                   for letter in send]
        producer.flush()
        replayed = 0
        for letter, future in futures:
            try:
                meta = future.get(timeout=0)  # flushed: already done
            except Exception as e:
                raise cli.Fatal(f"replaying {topic}@{letter.record.offset} failed ({type(e).__name__}: {e}); "
                                f"{replayed} of {len(send)} were replayed before it (see above)") from None
            print(f"replayed {letter.record.offset} -> {meta.topic}[{meta.partition}]@{meta.offset}", flush=True)
            replayed += 1
    finally:
        producer.close()
    log.info("replayed %d dead letters from %s[%d] (offsets %s) into %s; %d unusable not replayed", replayed,
             topic, partition, chosen, target, len(unusable))
    return 0


# -------------------------------------------------------------------------------------------- main


def offsets_arg(text: str) -> Offsets:
    try:
        return parse_offsets(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True, metavar="{list,replay,show}")

    def command(name: str, help: str, topic_help: str) -> argparse.ArgumentParser:
        # The flags every script shares, after the command name (`list TOPIC --bootstrap-servers ...`).
        c = commands.add_parser(name, help=help, description=help, parents=[cli.parser(None)],
                                conflict_handler="resolve")
        c.add_argument("topic", metavar="TOPIC", help=topic_help)
        return c

    def dead_letter_command(name: str, help: str) -> argparse.ArgumentParser:
        c = command(name, help, "dead-letter topic (ride_details.dlq) or its source topic (ride_details)")
        c.add_argument("--partition", type=int, default=0, metavar="P",
                       help="partition of the dead-letter topic (default: 0, the only one)")
        c.add_argument("--group", metavar="GROUP_ID",
                       help="only the dead letters set aside by this consumer group (default: every group's)")
        return c

    ls = dead_letter_command("list", "print one line per dead letter: offset, origin, when, group, reason, key "
                                     "and value, and what is wrong with it if it cannot be replayed")
    ls.add_argument("--offsets", type=offsets_arg, metavar="3,5-9,20-", help="only these offsets (default: all)")
    ls.add_argument("--limit", type=int, metavar="N", help="stop after N dead letters")
    ls.add_argument("--json", action="store_true", help="one JSON object per line instead")

    rp = dead_letter_command("replay", "send the chosen dead letters' original key, value and headers to the "
                                       "topic their dead-letter topic was derived from (ride_details.dlq -> "
                                       "ride_details, same prefix), once per source record (when several groups "
                                       "set the same record aside); letters whose dlq.* headers are wrong, or "
                                       "that were truncated, are skipped; every group reading that topic receives "
                                       "them again")
    which = rp.add_mutually_exclusive_group(required=True)
    which.add_argument("--offsets", type=offsets_arg, metavar="3,5-9,20-", help="the dead letters to replay")
    which.add_argument("--all", action="store_true", help="replay every dead letter of the topic")

    sh = command("show", "print one line per record of any topic (ride_rejected, ride_confirmed, ...): "
                         "topic[partition]@offset, time, key, value and header names",
                 "a topic as named in common.topics (ride_rejected); --topic-prefix is prepended")
    sh.add_argument("--partition", type=int, metavar="P", help="only this partition (default: all, in order)")
    sh.add_argument("--offsets", type=offsets_arg, metavar="3,5-9,20-",
                    help="only these offsets of each partition (default: all)")
    sh.add_argument("--limit", type=int, metavar="N", help="stop after N records")
    sh.add_argument("--json", action="store_true", help="one JSON object per line instead, with the whole key, "
                                                        "value and headers (base64 where not UTF-8)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if getattr(args, "limit", None) is not None and args.limit < 0:
        p.error("--limit must be 0 or more")
    # The settings come from the shared flags only, through the same path as every script's.
    shared = cli.parser(None)
    names = vars(shared.parse_args([])).keys()
    shared_argv = [f"--{n.replace('_', '-')}={getattr(args, n)}" for n in names if getattr(args, n) is not None]
    settings = cli.load(Settings, shared_argv)
    shutdown = Shutdown.on_signals()
    run = {"list": list_command, "replay": replay_command, "show": show_command}[args.command]
    return run(settings, args, shutdown)


if __name__ == "__main__":
    cli.run(lambda: main(sys.argv[1:]))
