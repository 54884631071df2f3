"""Malformed and hostile records for the fuzz test, and odd but valid ones: pure and seeded.

Every hostile record is checked here, when it is made, to be refused by common.schemas.decode (so the
fuzz test can demand that every one of them is dead-lettered), and every odd-but-valid one to be
accepted (so that it must be confirmed, rejected, emailed or counted, never dead-lettered). The same
seed gives the same records.

    rng = random.Random(7)
    requests = hostile_requests(rng, 1000)        # for ride_details: [Fuzzed(kind, key, value, headers)]
    confirmations = hostile_confirmations(rng, 200)  # RideConfirmed-shaped, for ride_confirmed
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import rides
from common import schemas
from common.dead_letters import OUR_HEADERS
from common.schemas import Message, Place, PoisonRecord, RideConfirmed, RideRequest

# Big enough to hurt a careless consumer, small enough for Kafka's default 1 MB record limit.
MAX_STRING = 300_000  # bytes
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)  # fixed: the same seed gives the same bytes


@dataclass(frozen=True)
class Fuzzed:
    kind: str  # which mutation made it, for failure messages
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


# ---------------------------------------------------------------------------------- valid messages


def valid_request(rng: random.Random) -> RideRequest:
    """A ride as rides.py makes it (its own domain function), inside the service area."""
    return rides.build_ride(rng, NOW)


def valid_confirmation(rng: random.Random) -> RideConfirmed:
    """A RideConfirmed as transaction.py could have written it."""
    request = valid_request(rng)
    return RideConfirmed(
        **request.model_dump(),
        driver_id=f"drv-{rng.randrange(1000):04d}",
        distance_km=round(rng.uniform(0.5, 20), 3),
        pickup_eta_minutes=round(rng.uniform(1, 30), 1),
        fare=Decimal(rng.randrange(500, 9000)) / 100,
        currency="USD",
        confirmed_at=NOW + timedelta(seconds=rng.randrange(60)),
    )


def as_dict(message: Message) -> dict:
    return json.loads(schemas.encode(message))


def dumps(obj: object) -> bytes:
    # allow_nan: Python's json writes NaN and Infinity as the bare (non-standard) literals, on purpose.
    return json.dumps(obj, allow_nan=True).encode()


# -------------------------------------------------------------------------------------- mutations
# Each takes (rng, a valid message as a dict, its key) and returns (kind, key, value).

Mutation = Callable[[random.Random, dict, bytes], tuple[str, bytes | None, bytes | None]]

REQUIRED = [("ride_id",), ("customer_id",), ("customer_email",), ("pickup",), ("dropoff",), ("requested_at",),
            ("pickup", "lat"), ("pickup", "lon"), ("pickup", "zone"), ("dropoff", "lat"), ("dropoff", "zone")]
CONFIRMED_REQUIRED = [("driver_id",), ("distance_km",), ("pickup_eta_minutes",), ("fare",), ("currency",),
                      ("confirmed_at",)]
NUMBERS = [("pickup", "lat"), ("pickup", "lon"), ("dropoff", "lat"), ("dropoff", "lon"), ("passengers",)]
CONFIRMED_NUMBERS = [("distance_km",), ("pickup_eta_minutes",), ("fare",)]
STRINGS = [("customer_id",), ("customer_email",), ("pickup", "zone"), ("dropoff", "zone"), ("ride_id",)]
CONFIRMED_STRINGS = [("driver_id",), ("currency",)]


def _set(d: dict, path: tuple[str, ...], value: object) -> dict:
    d = json.loads(json.dumps(d))  # a deep copy
    target = d
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return d


def _drop(d: dict, path: tuple[str, ...]) -> dict:
    d = json.loads(json.dumps(d))
    target = d
    for p in path[:-1]:
        target = target[p]
    del target[path[-1]]
    return d


def random_bytes(rng, d, key):
    return "random bytes", rng.choice([key, None, rng.randbytes(16)]), rng.randbytes(rng.randint(1, 3000))


def not_utf8(rng, d, key):
    text = dumps(d)
    at = text.index(b'"customer_id": "') + len(b'"customer_id": "') + 1
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
    return "not UTF-8", key, text[:at] + bad + text[at:]


def not_json(rng, d, key):
    text = dumps(d)
    value = rng.choice([
        text[: rng.randrange(1, len(text) - 1)],       # truncated
        text.replace(b'":', b'"=', 1),                  # not JSON syntax
        b"ride_id=" + key,
        b"\x00" * rng.randint(1, 64),
        text + b" trailing",
        b"{" * 5,
    ])
    return "not JSON", key, value


def not_an_object(rng, d, key):
    return "JSON but not an object", key, dumps(rng.choice([[d], "a string", 42, None, True, [], 1.5]))


def wrong_type(rng, d, key):
    path = rng.choice(REQUIRED + [("passengers",)])
    bad = rng.choice([[1, 2], {"a": 1}, True, None, "north" if path[-1] in ("lat", "lon", "passengers") else 12345])
    return "wrong type", key, dumps(_set(d, path, bad))


def missing_field(rng, d, key):
    return "missing field", key, dumps(_drop(d, rng.choice(REQUIRED)))


def out_of_range(rng, d, key):
    path = rng.choice(NUMBERS)
    bad = rng.choice([1e308, -1e308, 10**40, -(10**40), 91.5, -181, 0, -1, 9, 2**63, -(2**63) - 1])
    if path[-1] == "passengers" and bad in (9, 0, -1, 10**40, -(10**40), 2**63):
        pass
    elif path[-1] != "passengers":
        bad = rng.choice([1e308, -1e308, 10**40, -(10**40), 91.5 if path[-1] == "lat" else 181.5, -200.25])
    return "huge or negative number", key, dumps(_set(d, path, bad))


def nan_or_infinity(rng, d, key):
    path = rng.choice(NUMBERS[:4])
    return "NaN or Infinity", key, dumps(_set(d, path, rng.choice([float("nan"), float("inf"), float("-inf")])))


def deep_nesting(rng, d, key):
    depth = rng.choice([300, 5_000, 100_000])
    nested = rng.choice([("[", "]"), ('{"a":', "}")])
    inner = nested[0] * depth + "1" + nested[1] * depth
    path = rng.choice([("pickup",), ("customer_id",), ("extra",)])
    text = dumps(_set(d, path, "@@")).replace(b'"@@"', inner.encode())
    return "deep nesting", key, text


def oversized_string(rng, d, key):
    path = rng.choice(STRINGS)
    size = rng.choice([65, 1001, 10_000, rng.randint(100_000, MAX_STRING)])
    char = rng.choice("xé€𝄞")
    # json.dumps writes non-ASCII as \uXXXX escapes: 6 or 12 bytes a character; keep the bytes near `size`.
    return "oversized string", key, dumps(_set(d, path, char * max(65, size // len(json.dumps(char)))))


def wrong_schema_version(rng, d, key):
    return "wrong schema_version", key, dumps(_set(d, ("schema_version",), rng.choice([0, 2, 99, -1, None, "v1"])))


def bad_format(rng, d, key):
    path, bad = rng.choice([
        (("ride_id",), "not-a-uuid"), (("ride_id",), ""), (("customer_email",), "no-at-sign"),
        (("customer_email",), "a@b"), (("customer_id",), "has space"), (("customer_id",), ""),
        (("customer_id",), "semi;colon"), (("requested_at",), "2025-06-01T12:00:00"),  # no time zone
        (("requested_at",), "yesterday"), (("requested_at",), "2025-13-45T99:00:00Z"), (("pickup", "zone"), ""),
    ])
    return "bad format", key, dumps(_set(d, path, bad))


def unsafe_value(rng, d, key):
    """Values that once got past the schema and then crashed or misled a consumer."""
    path, bad = rng.choice([
        (("customer_email",), "a,b@example.com"),       # two recipients in To:
        (("customer_email",), "(comment)@example.com"),  # no recipient at all
        (("customer_email",), "a\x00b@example.com"),
        (("customer_email",), "ü@example.com"),
        # RFC 2047 encoded words: decoded by the header parser into a CR LF "Bcc:", or a second recipient.
        (("customer_email",), "=?utf-8?q?x=0D=0ABcc=3A_evil=40attacker.test?=@example.com"),
        (("customer_email",), "=?utf-8?q?evil=40attacker.test=2C?=@example.com"),
        (("customer_email",), "Ada <ada@example.com>"),  # a display name
        (("customer_name",), "Ada\r\nBcc: x@evil.example"),
        (("customer_name",), "\u202eadA"),  # a right-to-left override: not printable
        (("customer_name",), "   "),
        (("requested_at",), "9999-12-31T23:59:59-23:00"),  # OverflowError when converted to UTC
        (("requested_at",), "0001-01-01T00:00:00+23:00"),
        (("requested_at",), "0999-01-01T00:00:00Z"),       # analysis.py's "%Y" minute keys assume 4 digits
        (("requested_at",), "1969-12-31T23:59:59Z"),
    ])
    if "confirmed_at" in d and path == ("requested_at",):
        path = rng.choice([path, ("confirmed_at",)])
    return "unsafe email or timestamp", key, dumps(_set(d, path, bad))


def key_mismatch(rng, d, key):
    other = rng.choice([str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode(), b"", b"\xff\xfe",
                        key.upper(), key + b" ", b"x" * 10_000])
    return "key is not the ride_id", other, dumps(d)


def null_key(rng, d, key):
    return "null key", None, dumps(d)


def empty_value(rng, d, key):
    return "empty value", key, rng.choice([b"", None, b" ", b"{}", b"null"])


REQUEST_MUTATIONS: list[Mutation] = [
    random_bytes, not_utf8, not_json, not_an_object, wrong_type, missing_field, out_of_range, nan_or_infinity,
    deep_nesting, oversized_string, wrong_schema_version, bad_format, unsafe_value, key_mismatch, null_key,
    empty_value,
]


def confirmed_wrong_type(rng, d, key):
    path = rng.choice(CONFIRMED_REQUIRED)
    return "wrong type", key, dumps(_set(d, path, rng.choice([[1], {"x": 1}, True, None])))


def confirmed_missing_field(rng, d, key):
    return "missing field", key, dumps(_drop(d, rng.choice(CONFIRMED_REQUIRED + REQUIRED)))


def confirmed_out_of_range(rng, d, key):
    path = rng.choice(CONFIRMED_NUMBERS)
    bad = rng.choice([-1, -0.01, 1e308, 10**40, float("nan"), float("inf")])
    if path == ("fare",):
        bad = rng.choice([-1, "100000.01", "1.001", "1e400", float("nan"), 10**40])
    return "huge, negative or NaN number", key, dumps(_set(d, path, bad))


def confirmed_bad_format(rng, d, key):
    path, bad = rng.choice([(("currency",), "usd"), (("currency",), "DOLLARS"), (("driver_id",), "a b"),
                            (("confirmed_at",), "2025-06-01 12:00"), (("driver_id",), "d" * 65)])
    return "bad format", key, dumps(_set(d, path, bad))


CONFIRMED_MUTATIONS: list[Mutation] = [
    random_bytes, not_utf8, not_json, not_an_object, confirmed_wrong_type, confirmed_missing_field,
    confirmed_out_of_range, nan_or_infinity, deep_nesting, oversized_string, wrong_schema_version,
    confirmed_bad_format, unsafe_value, key_mismatch, null_key, empty_value,
]


# ---------------------------------------------------------------------------------------- headers


def hostile_headers(rng: random.Random) -> list[tuple[str, bytes]]:
    """Headers a hostile producer might add: junk bytes, and forged dead-letter headers that must not
    survive into the dead letter (common.dead_letters writes its own)."""
    return rng.choice([
        [],
        [],
        [("trace", rng.randbytes(8))],
        [(h, b"forged \xff") for h in OUR_HEADERS],
        [("dlq.reason", b"all is well"), ("x" * 200, b"\x00" * 1000)],
    ])


# --------------------------------------------------------------------------------------- generators


def _hostile(rng: random.Random, n: int, model: type[Message], make_valid: Callable[[random.Random], Message],
             mutations: list[Mutation]) -> list[Fuzzed]:
    out: list[Fuzzed] = []
    for attempt in range(20 * n):
        message = make_valid(rng)
        key = schemas.ride_key(message.ride_id)
        # Every kind in turn, evenly. A mutation that stays valid (random bytes that parse; a kind the
        # schema has stopped refusing) is skipped, not retried: tests/unit/test_hostile.py notices a kind
        # that never comes out.
        mutate = mutations[attempt % len(mutations)]
        kind, k, v = mutate(rng, as_dict(message), key)
        try:
            schemas.decode(model, k, v)
        except PoisonRecord:
            out.append(Fuzzed(kind, k, v, hostile_headers(rng)))
            if len(out) == n:
                return out
    raise RuntimeError(f"only {len(out)} of {n} mutations were refused by the schema after {20 * n} attempts")


def hostile_requests(rng: random.Random, n: int) -> list[Fuzzed]:
    """n records for ride_details that transaction.py must dead-letter, every kind of mutation evenly."""
    return _hostile(rng, n, RideRequest, valid_request, REQUEST_MUTATIONS)


def hostile_confirmations(rng: random.Random, n: int) -> list[Fuzzed]:
    """n RideConfirmed-shaped records for ride_confirmed that email.py and analysis.py must dead-letter."""
    return _hostile(rng, n, RideConfirmed, valid_confirmation, CONFIRMED_MUTATIONS)


def odd_requests(rng: random.Random) -> list[RideRequest]:
    """Valid requests at the edges of the schema: transaction.py must confirm or reject each, not crash."""
    base = valid_request(rng)
    far = Place(lat=-89.9, lon=179.9, zone="antipodes")
    same = base.pickup
    edges: list[dict[str, Any]] = [
        dict(pickup=far, dropoff=far),
        dict(pickup=base.pickup, dropoff=far),
        dict(pickup=Place(lat=90, lon=-180, zone="pole"), dropoff=Place(lat=-90, lon=180, zone="other pole")),
        dict(pickup=same, dropoff=same),
        dict(passengers=8),
        dict(requested_at=datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)),
        dict(requested_at=datetime(1970, 1, 1, 0, 0, tzinfo=timezone.utc)),
        dict(customer_id="c" * 64, customer_email="e" * 240 + "@example.com"),
        dict(pickup=Place(lat=same.lat, lon=same.lon, zone="Ω\u202e\r\nBcc: x@evil.example <b>"),
             dropoff=Place(lat=base.dropoff.lat, lon=base.dropoff.lon, zone="z" * 64)),
    ]
    out = []
    for change in edges:
        fields = base.model_dump() | change | {"ride_id": uuid.UUID(int=rng.getrandbits(128), version=4)}
        out.append(RideRequest(**fields))
    return out


def odd_confirmations(rng: random.Random) -> list[RideConfirmed]:
    """Valid confirmations at the edges of the schema: email.py must email and analysis.py count each."""
    out = []
    changes: list[dict[str, Any]] = [
        dict(fare=Decimal("100000.00"), distance_km=500, pickup_eta_minutes=240),
        dict(fare=Decimal("0"), distance_km=0, pickup_eta_minutes=0),
        dict(currency="XXX", driver_id="d" * 64),
        dict(confirmed_at=datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc)),
        dict(requested_at=datetime(1970, 1, 1, tzinfo=timezone.utc),
             confirmed_at=datetime(1970, 1, 1, tzinfo=timezone.utc)),
        dict(pickup=Place(lat=40.75, lon=-73.99, zone="Ω\u202e\r\nBcc: x@evil.example <b>&amp;")),
        dict(customer_email="o'brien+rides@xn--bcher-kva.example"),
        dict(customer_name="Zoë O'Brien-Łukasiewicz <b>&amp; 山田"),
    ]
    for change in changes:
        fields = valid_confirmation(rng).model_dump() | change
        out.append(RideConfirmed(**fields))
    return out


def resent(rng: random.Random, requests: list[RideRequest]) -> list[RideRequest]:
    """The same requests sent again, as a client retrying would: stamped anew, otherwise identical."""
    return [r.model_copy(update={"requested_at": r.requested_at + timedelta(seconds=rng.randint(1, 600))})
            for r in requests]


def conflicting(rng: random.Random, requests: list[RideRequest]) -> list[RideRequest]:
    """Other riders' requests under the ride_ids of these: transaction.py must set each aside."""
    return [valid_request(rng).model_copy(update={"ride_id": r.ride_id}) for r in requests]


def interleave(rng: random.Random, *groups: list) -> list:
    """All items of the groups in one random order (each group's own order kept is not needed)."""
    items = [x for g in groups for x in g]
    rng.shuffle(items)
    return items
