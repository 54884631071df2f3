"""common/schemas.py: every valid message survives the wire; every malformed record is a PoisonRecord.

"Malformed" is what a hostile or buggy producer can put in ride_details: random bytes, non-UTF-8, deep
nesting, wrong types, missing fields, huge, negative or non-finite numbers, oversized strings, a key that
is not the ride_id. decode() must turn each into a PoisonRecord with a short reason (so that it can be
dead-lettered) and never raise anything else (which would crash a consumer on every restart).
"""

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common import schemas
from common.schemas import PoisonRecord, RideConfirmed, RideRejected, RideRequest
from tests.unit.strategies import encoded_word_emails, json_values, ride_confirmations, ride_rejections, ride_requests

REASON_LIMIT = 500  # schemas.describe() keeps a reason to one short line
REQUIRED = ["ride_id", "customer_id", "customer_email", "pickup", "dropoff", "requested_at"]
VALID: dict[str, Any] = {
    "schema_version": 1,
    "ride_id": "0b0ead10-f761-401b-91a4-cb7a44dd6f2c",
    "customer_id": "cust-00042",
    "customer_email": "ada.garcia.42@example.com",
    "pickup": {"lat": 40.758, "lon": -73.9855, "zone": "Midtown West"},
    "dropoff": {"lat": 40.7069, "lon": -74.0113, "zone": "Financial District"},
    "passengers": 1,
    "requested_at": "2026-01-02T03:04:05Z",
}
KEY = VALID["ride_id"].encode()


def poison(value: bytes | None, key: bytes | None = KEY, model=RideRequest) -> str:
    """decode() must raise PoisonRecord, with a short one-line reason; returns the reason."""
    with pytest.raises(PoisonRecord) as e:
        schemas.decode(model, key, value)
    reason = str(e.value)
    assert 0 < len(reason) <= REASON_LIMIT and "\n" not in reason
    return reason


def decodes_or_poison(value: bytes | None, key: bytes | None = KEY) -> None:
    """The contract for arbitrary input: a valid message, or a PoisonRecord; never another exception."""
    try:
        schemas.decode(RideRequest, key, value)
    except PoisonRecord as e:
        assert 0 < len(str(e)) <= REASON_LIMIT


def with_field(name: str, raw_json: str) -> bytes:
    """VALID with one field's JSON replaced by raw text (which may be what json.dumps cannot write)."""
    marker = "__REPLACE_ME__"
    return json.dumps({**VALID, name: marker}).replace(f'"{marker}"', raw_json).encode()


def test_the_reference_record_is_valid():
    assert schemas.decode(RideRequest, KEY, json.dumps(VALID).encode()).customer_id == "cust-00042"


# ---------------------------------------------------------------------------------------- round trips


@given(ride_requests)
def test_ride_request_round_trip(msg):
    assert schemas.decode(RideRequest, schemas.ride_key(msg.ride_id), schemas.encode(msg)) == msg


@given(ride_confirmations())
def test_ride_confirmed_round_trip(msg):
    assert schemas.decode(RideConfirmed, schemas.ride_key(msg.ride_id), schemas.encode(msg)) == msg


@given(ride_rejections())
def test_ride_rejected_round_trip(msg):
    assert schemas.decode(RideRejected, schemas.ride_key(msg.ride_id), schemas.encode(msg)) == msg


@given(ride_confirmations())
def test_a_confirmation_is_also_a_readable_request(msg):
    # Readers ignore fields they do not know: a ride_confirmed value read as a RideRequest keeps its request.
    request = schemas.decode(RideRequest, schemas.ride_key(msg.ride_id), schemas.encode(msg))
    assert request.ride_id == msg.ride_id and request.pickup == msg.pickup


@given(ride_requests)
def test_encoded_values_are_utf8_json_objects_with_the_contract_fields(msg):
    value = json.loads(schemas.encode(msg).decode("utf-8"))
    assert value["schema_version"] == schemas.SCHEMA_VERSION
    assert value["ride_id"] == str(msg.ride_id) and value["customer_id"] == msg.customer_id


# ------------------------------------------------------------------------------------ malformed input


@given(st.binary(max_size=2000))
@example(b"")
@example(b"\x00")
@example(b"{}")
def test_random_bytes_are_poison(value):
    poison(value)


@given(st.binary(min_size=1, max_size=4), st.integers(0, 200))
def test_non_utf8_is_poison(garbage, where):
    valid = json.dumps(VALID).encode()
    where = min(where, len(valid))
    # 0xff and 0xfe never occur in UTF-8; spliced anywhere, the record is no longer valid UTF-8.
    value = valid[:where] + b"\xff" + garbage + valid[where:]
    poison(value)


@given(st.integers(100, 100_000), st.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_poison(depth, opener):
    poison((opener * depth).encode())
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    # ... also where an unknown field would otherwise be ignored: shallow nesting there is harmless, but
    # past the parser's recursion limit (a few hundred levels) it is refused, never a RecursionError.
    value = json.dumps({**VALID, "extra": "X"}).replace('"X"', nested).encode()
    if depth >= 1000:
        poison(value)
    else:
        decodes_or_poison(value)


@given(st.sampled_from(REQUIRED))
def test_a_missing_required_field_is_poison(field):
    value = {k: v for k, v in VALID.items() if k != field}
    assert field in poison(json.dumps(value).encode())


@given(st.sampled_from(list(VALID)), json_values)
def test_any_field_of_any_type_is_valid_or_poison(field, replacement):
    decodes_or_poison(json.dumps({**VALID, field: replacement}).encode())


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("ride_id", "12345"), ("ride_id", '"not-a-uuid"'), ("ride_id", "null"),
        ("customer_id", "42"), ("customer_id", '["a"]'), ("customer_id", '"has space"'),
        ("customer_email", '"no-at-sign"'), ("customer_email", "{}"),
        ("pickup", '"Times Square"'), ("pickup", "[40.7, -74.0]"),
        ("pickup", '{"lat": "north", "lon": 1, "zone": "z"}'),
        ("passengers", '"two"'), ("passengers", "[]"), ("passengers", "1.5"),
        ("requested_at", '"yesterday"'), ("requested_at", '"2026-01-02T03:04:05"'),  # no time zone
        ("schema_version", "2"), ("schema_version", '"1.0"'),
    ],
)
def test_wrong_types_are_poison(field, raw):
    assert field in poison(with_field(field, raw))


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "91", "-90.0001", "1" + "0" * 400])
def test_bad_latitudes_are_poison(raw):
    value = json.dumps({**VALID, "pickup": {"lat": "X", "lon": -74.0, "zone": "z"}}).replace('"X"', raw).encode()
    poison(value)


@given(st.one_of(st.integers(max_value=0), st.integers(min_value=9), st.just(10**100), st.just(-(10**100))))
def test_out_of_range_passenger_counts_are_poison(n):
    poison(with_field("passengers", str(n)))


@given(st.sampled_from(["customer_id", "customer_email", "ride_id"]), st.integers(1001, 200_000))
@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=30)
def test_oversized_strings_are_poison_and_not_echoed(field, size):
    hostile = "A" * size
    reason = poison(json.dumps({**VALID, field: hostile}).encode())
    assert hostile[:100] not in reason  # a reason names the problem, never repeats the input


def test_oversized_zone_is_poison():
    poison(json.dumps({**VALID, "pickup": {**VALID["pickup"], "zone": "Z" * 100_000}}).encode())


def test_tombstone_is_poison():
    assert "tombstone" in poison(None)


@given(st.one_of(st.none(), st.binary(max_size=100)))
@example(None)
@example(str(uuid.uuid4()).encode())
@example(KEY.upper())
@example(KEY + b" ")
def test_a_key_that_is_not_the_ride_id_is_poison(key):
    if key == KEY:
        return
    assert "key" in poison(json.dumps(VALID).encode(), key=key)


@given(json_values, st.one_of(st.none(), st.binary(max_size=40)))
def test_any_json_with_any_key_is_valid_or_poison(value, key):
    decodes_or_poison(json.dumps(value).encode(), key)


@given(ride_requests, st.sampled_from(REQUIRED + ["passengers", "schema_version"]), json_values)
def test_mutating_a_valid_request_gives_valid_or_poison(msg, field, replacement):
    value = json.loads(schemas.encode(msg))
    value[field] = replacement
    decodes_or_poison(json.dumps(value).encode(), schemas.ride_key(msg.ride_id))


def test_record_step_turns_any_failure_of_a_pure_step_into_a_one_line_reason():
    from common.schemas import PoisonRecord, record_step

    def explode(value):
        raise ValueError(f"address parts cannot contain CR or LF: {value}")

    with pytest.raises(PoisonRecord, match=r"^cannot render: ValueError: address parts cannot contain CR or LF: a  b$"):
        record_step("cannot render", explode, "a\r\nb")
    assert record_step("cannot render", lambda x: x * 2, 21) == 42
    with pytest.raises(MemoryError):  # the process's trouble, not the record's: never set aside
        record_step("cannot render", lambda: (_ for _ in ()).throw(MemoryError()))


# ------------------------------------------------------------------------- email addresses: one addr-spec

HOSTILE_EMAILS = [
    "=?utf-8?q?x=0D=0ABcc=3A_evil=40attacker.test?=@example.com",  # CR LF "Bcc:" once decoded
    "=?utf-8?q?evil=40attacker.test=2C?=@example.com",              # a second recipient once decoded
    "a=?utf-8?b?QQ==?=@example.com",                               # an encoded word inside the local part
    ".ada@example.com", "ada.@example.com", "ada..garcia@example.com",  # not a dot-atom
    "Ada <ada@example.com>", "ada@example.com, eve@example.com", "a,b@example.com", "(x)@example.com",
    "ada@example.com\n", "ada@exa\u00dfmple.com", "\u00e4da@example.com", "ada@example", "ada@@example.com",
]


@pytest.mark.parametrize("address", HOSTILE_EMAILS)
def test_an_email_is_one_plain_ascii_addr_spec_without_encoded_words(address):
    assert "customer_email" in poison(json.dumps({**VALID, "customer_email": address}).encode())


@pytest.mark.parametrize("address", ["ada.garcia.42@example.com", "o'brien+rides@xn--bcher-kva.example",
                                     "x=y?z@example.com", "e" * 240 + "@example.com", "a!#$%&*/^_`{|}~-@b.co"])
def test_plain_addr_specs_stay_valid(address):
    assert schemas.decode(RideRequest, KEY, json.dumps({**VALID, "customer_email": address}).encode())


@given(encoded_word_emails)
def test_encoded_word_local_parts_are_refused(address):
    assert "customer_email" in poison(json.dumps({**VALID, "customer_email": address}).encode())
