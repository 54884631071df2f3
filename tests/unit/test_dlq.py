"""The pure parts of `python -m tools.dlq`: offset selections, safe previews, one line per dead letter."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord

from common import dead_letters
from tools.dlq import (
    ALL,
    build_parser,
    dead_letter_name,
    escape,
    format_json,
    format_line,
    format_record,
    format_record_json,
    parse_offsets,
    preview,
    replay_plan,
    replay_source,
    when,
)
from tools.letters import DeadLetter

# ------------------------------------------------------------------------------------------ offsets


def test_offsets_single_ranges_and_open_range():
    chosen = parse_offsets("3, 5-9,20-")
    assert [o for o in range(30) if o in chosen] == [3, 5, 6, 7, 8, 9, *range(20, 30)]
    assert chosen.last is None
    assert str(chosen) == "3,5-9,20-"


def test_offsets_last_is_the_highest_chosen():
    assert parse_offsets("7,2-4").last == 7
    assert parse_offsets("0").last == 0
    assert ALL.last is None and 10**12 in ALL


@pytest.mark.parametrize("text", ["", ",", "a", "-3", "3-1", "1-2-3", "+3", "1e3", "٣", "3,", "5--", "1.5"])
def test_offsets_refuses_anything_else_with_a_reason(text):
    with pytest.raises(ValueError) as e:
        parse_offsets(text)
    assert "\n" not in str(e.value)


def test_offsets_errors_surface_as_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["replay", "ride_details.dlq", "--offsets", "9-3"])
    assert e.value.code == 2
    assert "the range ends before it starts" in capsys.readouterr().err


def test_replay_needs_offsets_or_all(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", "ride_details.dlq"])
    args = build_parser().parse_args(["replay", "ride_details", "--all", "--bootstrap-servers", "h:1"])
    assert args.all and args.bootstrap_servers == "h:1"


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 1000)), min_size=1, max_size=5))
def test_offsets_round_trip(ranges):
    text = ",".join(f"{lo}-{lo + n}" for lo, n in ranges)
    chosen = parse_offsets(text)
    for lo, n in ranges:
        assert lo in chosen and lo + n in chosen
    assert parse_offsets(str(chosen)) == chosen


def test_topic_name_accepts_the_source_topic():
    assert dead_letter_name("ride_details") == "ride_details.dlq"
    assert dead_letter_name("ride_details.dlq") == "ride_details.dlq"


# ----------------------------------------------------------------------------------------- previews


def test_escape_neutralises_terminal_control():
    hostile = "a\x1b[2J\x07b\r\nc\td\u202eevil\x00\\x41"
    out = escape(hostile)
    assert out == "a\\x1b[2J\\x07b\\r\\nc\\td\\u202eevil\\x00\\\\x41"
    assert out.isprintable()


@given(st.binary(max_size=2000))
def test_preview_is_always_one_short_printable_line(data):
    out = preview(data, 60)
    assert out.isprintable() and len(out) <= 60


@given(st.text(max_size=50))
def test_preview_of_short_printable_utf8_is_the_text(text):
    if text and text.isprintable() and "\\" not in text:
        assert preview(text.encode(), 60) == text


def test_preview_marks_bytes_that_are_not_utf8():
    assert preview(b"ok\xff\xfe") == "ok\\xff\\xfe"
    assert preview(b'{"a": "\xc3\xa9"}') == '{"a": "é"}'


def test_preview_of_null_empty_and_huge_values():
    assert preview(None) == "(null)"
    assert preview(b"") == "(empty)"
    huge = b'{"customer_id": "' + b"x" * 500_000 + b'"}'
    out = preview(huge, 60)
    assert len(out) == 60 and out.endswith("…") and out.startswith('{"customer_id": "xxx')


def test_when():
    assert when(0) == "-"
    assert when(1_700_000_000_123) == "2023-11-14T22:13:20Z"


# ------------------------------------------------------------------------------------------- lines


def dead_letter(value: bytes | None, key: bytes | None = b"k-1", reason: str = "RideRequest invalid: x") -> DeadLetter:
    source = ConsumerRecord("p.ride_details", 4, -1, 1045, 1_700_000_000_000, 0, key, value,
                            [("trace", b"t1")], None, 0, 0, 0)
    headers = dead_letters.headers_for(source, reason, "transaction")
    headers = [(k, b"1700000003000" if k == dead_letters.FAILED_AT else v) for k, v in headers]
    dlq = ConsumerRecord("p.ride_details.dlq", 0, -1, 12, 1_700_000_003_000, 0, key, value, headers,
                         None, 0, 0, 0)
    return DeadLetter.parse(dlq)


def test_line_names_offset_origin_time_group_reason_and_value():
    line = format_line(dead_letter(b'{"ride_id": 5}'))
    assert line.startswith("12  p.ride_details[4]@1045  2023-11-14T22:13:23Z  transaction  RideRequest invalid: x  ")
    assert line.endswith('key=k-1  value[14 B]={"ride_id": 5}')


def test_line_is_safe_for_hostile_key_value_and_reason():
    letter = dead_letter(b"\x1b]0;pwned\x07" + b"\xff" * 300_000, key=b"\x1b[31m", reason="bad\nline\x1b[0m")
    line = format_line(letter)
    assert line.isprintable() and len(line) < 400
    assert "value[300010 B]=\\x1b]0;pwned\\x07\\xff" in line
    assert "bad\\nline\\x1b[0m" in line and "key=\\x1b[31m" in line


def test_json_line_carries_the_same_facts():
    obj = json.loads(format_json(dead_letter(b"\xffnot json", key=None)))
    assert obj["offset"] == 12 and obj["source_topic"] == "p.ride_details"
    assert (obj["source_partition"], obj["source_offset"]) == (4, 1045)
    assert obj["reason"] == "RideRequest invalid: x" and obj["group"] == "transaction"
    assert obj["key"] == "(null)" and obj["value"] == "\\xffnot json" and obj["value_bytes"] == 9
    assert obj["headers"] == ["trace"]
    assert format_json(dead_letter(b"x" * 10_000)).isascii()


def test_replay_sends_each_source_record_once_whatever_the_number_of_groups():
    email = dead_letter(b"x")
    analysis = DeadLetter.parse(email.record._replace(
        offset=13, headers=[(k, b"analysis" if k == dead_letters.GROUP else v) for k, v in email.record.headers]))
    unknown = DeadLetter.parse(email.record._replace(offset=14, headers=[]))  # no dlq.* headers: unusable
    send, unusable, repeats = replay_plan([email, analysis, unknown, unknown])
    assert send == [email]
    assert repeats == [(analysis, email)]
    assert unusable == [unknown, unknown]


def test_an_undelivered_dead_letter_stops_the_script_before_its_commit():
    from kafka.future import Future

    from common.cli import Fatal
    from common.dead_letters import stop_if_undelivered

    delivered, lost = Future(), Future()
    delivered.success(None)
    lost.failure(Exception("broker gone"))
    sends = [delivered]
    stop_if_undelivered(sends, "email.py")  # all delivered: nothing happens
    assert sends == []  # cleared for the next batch
    sends = [delivered, lost]
    with pytest.raises(Fatal, match=r"1 dead letters could not be stored \(broker gone\); stopping without "
                                    r"saving: their records are read again when analysis.py runs again"):
        stop_if_undelivered(sends, "analysis.py", what_is_kept="saving")


# ---------------------------------------------------------------------------------- hostile letters


def with_headers(headers, topic: str = "p.ride_details.dlq", offset: int = 12) -> ConsumerRecord:
    return ConsumerRecord(topic, 0, -1, offset, 1_700_000_003_000, 0, b"k", b"v", headers, None, 0, 0, 0)


def good_headers(**changes: bytes | None) -> list[tuple[str, bytes]]:
    """A dead letter's headers as common.dead_letters writes them, with some replaced (None: removed)."""
    headers = dict(dead_letter(b"x").record.headers)
    for name, value in changes.items():
        name = "dlq." + name.replace("_", ".")
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    return list(headers.items())


@pytest.mark.parametrize("changes, problem", [
    ({"source_partition": b"abc"}, "dlq.source.partition is not a number"),
    ({"source_offset": b"-3"}, "dlq.source.offset is not a number"),
    ({"source_offset": "٣".encode()}, "dlq.source.offset is not a number"),
    ({"failed_at": b"99999999999999999999"}, "dlq.failed.at is not a time"),
    ({"failed_at": b"0"}, "dlq.failed.at is not a time"),
    ({"reason": b"bad \xff\xfe reason"}, "dlq.reason is not UTF-8"),
    ({"group": None}, "no dlq.group"),
    ({"source_topic": b"q.ride_details"}, "dlq.source.topic is q.ride_details, not p.ride_details"),
    ({"source_topic": b"p.ride_confirmed"}, "dlq.source.topic is p.ride_confirmed, not p.ride_details"),
])
def test_a_malformed_letter_is_read_with_what_is_wrong(changes, problem):
    letter = DeadLetter.parse(with_headers(good_headers(**changes)))
    assert not letter.usable
    assert any(p.startswith(problem) for p in letter.problems), letter.problems
    line = format_line(letter)
    assert line.isprintable() and "unusable" in line and escape(problem) in line
    assert json.loads(format_json(letter))["problems"] == list(letter.problems)


def test_a_letter_without_any_dlq_header_is_unusable():
    letter = DeadLetter.parse(with_headers([]))
    assert letter.problems == ("no dlq.* headers: not set aside by a pipeline script",)
    assert format_line(letter).startswith("12  ?  -  -  ")


def test_a_header_given_twice_is_a_problem():
    letter = DeadLetter.parse(with_headers([*good_headers(), ("dlq.source.topic", b"p.ride_details")]))
    assert letter.problems == ("dlq.source.topic appears more than once",)


def test_a_well_formed_letter_is_usable():
    letter = DeadLetter.parse(with_headers(good_headers()))
    assert letter.usable and letter.problems == ()
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("p.ride_details", 4, 1045)


def test_nothing_from_a_header_reaches_the_terminal_raw():
    letter = DeadLetter.parse(with_headers(good_headers(group=b"\x1b]0;pwned\x07", reason=b"r\x1b[2J",
                                                         source_partition=b"\x1b[31m")))
    for text in (format_line(letter), format_json(letter), *letter.problems):
        assert "\x1b" not in escape(text) and "\x07" not in escape(text)
    assert "\x1b" not in format_line(letter) and format_json(letter).isascii()


OUR = [dead_letters.REASON, dead_letters.SOURCE_TOPIC, dead_letters.SOURCE_PARTITION, dead_letters.SOURCE_OFFSET,
       dead_letters.SOURCE_TIMESTAMP, dead_letters.GROUP, dead_letters.FAILED_AT, dead_letters.TRUNCATED]


@given(st.lists(st.tuples(st.sampled_from([*OUR, "trace", "\x1b"]), st.binary(max_size=30)), max_size=10),
       st.integers(-(2**63), 2**63 - 1))
def test_parsing_any_headers_never_raises_and_every_line_is_printable(headers, timestamp):
    letter = DeadLetter.parse(with_headers(headers)._replace(timestamp=timestamp))
    assert format_line(letter).isprintable()
    assert format_json(letter).isascii()
    assert format_record(letter.record).isprintable() and format_record_json(letter.record).isascii()


def test_when_never_fails():
    assert when(None) == "-" and when(-1) == "-"
    assert when(99999999999999999999) == "?99999999999999999999"


# ------------------------------------------------------------------------------------------ replay


def test_replay_goes_only_into_the_pipelines_own_source_topics():
    assert replay_source("ride_details.dlq") == "ride_details"
    assert replay_source("ride_confirmed") == "ride_confirmed"
    for other in ("ride_rejected", "ride_rejected.dlq", "something.dlq", "ride_details.dlq.dlq"):
        with pytest.raises(ValueError) as e:
            replay_source(other)
        assert "ride_details.dlq, ride_confirmed.dlq" in str(e.value) or "ride_confirmed.dlq, ride_details.dlq" \
            in str(e.value)


def test_replay_plan_skips_unusable_letters_and_repeats():
    good = DeadLetter.parse(with_headers(good_headers(), offset=1))
    again = DeadLetter.parse(with_headers(good_headers(group=b"analysis"), offset=2))
    elsewhere = DeadLetter.parse(with_headers(good_headers(source_topic=b"other.ride_details"), offset=3))
    broken = DeadLetter.parse(with_headers(good_headers(source_offset=b"abc"), offset=4))
    send, unusable, repeats = replay_plan([good, again, elsewhere, broken])
    assert send == [good] and unusable == [elsewhere, broken] and repeats == [(again, good)]


def truncated_letter(offset: int = 5) -> DeadLetter:
    """The letter common.dead_letters writes for a record too large to set aside whole."""
    source = ConsumerRecord("p.ride_details", 4, -1, 1045, 0, 0, b"k", b"x" * 1_048_400, [], None, 0, 0, 0)
    key, value, headers = dead_letters.letter_for(source, "not JSON", "transaction", 1_047_552)
    return DeadLetter.parse(with_headers(headers, offset=offset)._replace(key=key, value=value))


def test_a_truncated_letter_is_listed_as_truncated_and_never_replayed():
    letter = truncated_letter()
    line = format_line(letter)
    assert "unusable (never replayed): truncated when set aside (the original value was 1048400 bytes)" in line
    assert json.loads(format_json(letter))["problems"] == list(letter.problems)
    good = DeadLetter.parse(with_headers(good_headers(), offset=1))
    send, unusable, _ = replay_plan([good, letter])
    assert send == [good] and unusable == [letter]


# -------------------------------------------------------------------------------------- any topic


def rejected(value: bytes, key: bytes | None = b"ride-1", headers=()) -> ConsumerRecord:
    return ConsumerRecord("p.ride_rejected", 2, -1, 7, 1_700_000_000_000, 0, key, value, list(headers),
                          None, 0, 0, 0)


def test_a_record_of_any_topic_is_one_escaped_line():
    line = format_record(rejected(b'{"reason": "outside"}', headers=[("h\x1b", b"x")]))
    assert line == ('p.ride_rejected[2]@7  2023-11-14T22:13:20Z  key=ride-1  value[21 B]={"reason": "outside"}'
                    '  headers=h\\x1b')
    hostile = format_record(rejected(b"\x1b[2J" + b"\xff" * 100_000, key=b"\x07"))
    assert hostile.isprintable() and len(hostile) < 200 and "key=\\x07" in hostile


def test_a_record_as_json_is_whole_and_ascii():
    obj = json.loads(format_record_json(rejected(b"\xff" + b"x" * 1000, headers=[("trace", b"t\x1b")])))
    assert obj["topic"] == "p.ride_rejected" and (obj["partition"], obj["offset"]) == (2, 7)
    assert obj["key"] == "ride-1" and obj["timestamp"] == "2023-11-14T22:13:20Z"
    assert base64.b64decode(obj["value"]["base64"]) == b"\xff" + b"x" * 1000
    assert obj["headers"] == [["trace", "t\x1b"]]
    assert format_record_json(rejected(b"\x1b[2J")).isascii()


def test_show_is_a_command_and_the_old_ones_still_parse(capsys):
    args = build_parser().parse_args(["show", "ride_rejected", "--partition", "1", "--offsets", "3-", "--json"])
    assert (args.command, args.topic, args.partition, args.json) == ("show", "ride_rejected", 1, True)
    assert build_parser().parse_args(["show", "ride_rejected"]).partition is None
    assert build_parser().parse_args(["list", "ride_details.dlq", "--limit", "3"]).limit == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "show" in capsys.readouterr().out
