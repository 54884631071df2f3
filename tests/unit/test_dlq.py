"""The pure parts of `python -m common.dlq`: offset selections, safe previews, one line per dead letter."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord

from common import dead_letters
from common.dead_letters import DeadLetter
from common.dlq import (
    ALL,
    build_parser,
    dead_letter_name,
    distinct_sources,
    escape,
    format_json,
    format_line,
    parse_offsets,
    preview,
    when,
)

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
    unknown = DeadLetter.parse(email.record._replace(offset=14, headers=[]))  # no dlq.* headers: kept
    unique, skipped = distinct_sources([email, analysis, unknown, unknown])
    assert unique == [email, unknown, unknown]
    assert skipped == [(analysis, email)]


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
