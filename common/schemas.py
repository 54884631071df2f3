"""The messages on the pipeline's topics, validated with pydantic.

Each value is a UTF-8 JSON object carrying `schema_version`. Readers ignore fields they do not know, so
a producer may add fields without breaking its consumers; anything that removes or changes a field
bumps SCHEMA_VERSION. Every bound below is there so that hostile input is rejected here, with a reason,
instead of crashing a script further down.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, TypeVar
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from common.errors import PoisonRecord

SCHEMA_VERSION: Final = 1

Latitude = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
Longitude = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
# A plain ASCII addr-spec, dot-atom @ domain (no display name, no comment, no quoted local part, one
# address): anything looser lets a value such as "a,b@c.de" (two recipients), "(x)@y.zz" (a comment: no
# recipient) or a control character reach the To: header.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
EMAIL_PATTERN = rf"^{_ATEXT}(\.{_ATEXT})*@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$"


def _no_encoded_word(value: str) -> str:
    # "=?utf-8?q?...?=" is made of allowed characters, yet a mail parser decodes it (RFC 2047) into
    # whatever it encodes: a line break and a Bcc:, or a comma and a second recipient. "=?" starts one.
    if "=?" in value:
        raise ValueError("must not contain '=?' (an RFC 2047 encoded word)")
    return value


Email = Annotated[str, Field(min_length=3, max_length=254, pattern=EMAIL_PATTERN), AfterValidator(_no_encoded_word)]


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _utc_in_range(value: datetime) -> datetime:
    # 9999-12-31T23:59-23:00 is a valid aware datetime, yet converting it to UTC (which every reader
    # does to display or bucket it) raises OverflowError. Before the Unix epoch a timestamp is a mistake,
    # not a ride (and a year before 1000 breaks "%Y" round trips: strftime does not pad it to four
    # digits, strptime wants four). Refuse both here, as invalid input.
    if 1970 < value.year < 9999:  # an offset (under a day) takes neither bound within reach: 0.1 us, not 0.5
        return value
    try:
        utc = value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None
    if utc < EPOCH:
        raise ValueError("before 1970-01-01T00:00:00Z")
    return value


Timestamp = Annotated[AwareDatetime, AfterValidator(_utc_in_range)]


def _printable_name(value: str) -> str:
    # A name is shown to people (an email's greeting, a table): no control characters or line breaks,
    # and not only blanks.
    if not value.isprintable() or not value.strip():
        raise ValueError("must be printable text, not only blanks")
    return value


# The rider's name as they gave it: any script, but one printable line.
PersonName = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_printable_name)]


class Message(BaseModel):
    # frozen: a message is a fact; extra="ignore": tolerate fields added by a newer producer.
    model_config = ConfigDict(frozen=True, extra="ignore", str_max_length=1000)

    schema_version: Literal[1] = SCHEMA_VERSION
    ride_id: UUID  # every record's key, end to end


class Place(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    lat: Latitude
    lon: Longitude
    zone: Annotated[str, Field(min_length=1, max_length=64)]


class RideRequest(Message):
    """On ride_details: a customer asks for a ride (produced by rides.py)."""

    customer_id: Identifier
    customer_email: Email
    # Optional so that requests from producers that predate it stay valid (same schema_version).
    customer_name: PersonName | None = None
    pickup: Place
    dropoff: Place
    passengers: Annotated[int, Field(ge=1, le=8)] = 1
    requested_at: Timestamp


class RideConfirmed(RideRequest):
    """On ride_confirmed: a driver is on the way (produced by transaction.py)."""

    driver_id: Identifier
    distance_km: Annotated[float, Field(ge=0, le=500, allow_inf_nan=False)]
    pickup_eta_minutes: Annotated[float, Field(ge=0, le=240, allow_inf_nan=False)]
    fare: Annotated[Decimal, Field(ge=0, le=100_000, max_digits=9, decimal_places=2)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    confirmed_at: Timestamp


class RideRejected(Message):
    """On ride_rejected: a valid request that cannot be served, with the reason (transaction.py)."""

    customer_id: Identifier
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    rejected_at: Timestamp
    request: RideRequest


class StatsSnapshot(BaseModel):
    """On ride_stats, keyed by the analysis group: analysis.py's statistics as of a saved batch (api.py's /stats).
    Not a ride: no ride_id. `stats` is common.stats.Stats' JSON object, validated by its reader."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION
    group: Annotated[str, Field(min_length=1, max_length=200)]
    saved_at: Timestamp
    stats: dict[str, Any]


M = TypeVar("M", bound=Message)
T = TypeVar("T")


def record_step(what: str, step: Callable[..., T], *args: object) -> T:
    """Run one pure step of a record's processing (decode, validate, decide, render, fold): the rule that
    decides what is set aside and what stops a consumer.

    A pure step touches no infrastructure (no Kafka, no disk, no network), so any exception it raises
    belongs to this one record: it becomes a PoisonRecord with a one-line reason, and the record goes to the
    dead-letter topic instead of stopping the consumer at every restart. Failures of the infrastructure are
    raised by the calls around such steps and are never turned into dead letters here.
    """
    try:
        return step(*args)
    except PoisonRecord:
        raise
    except ValidationError as e:
        raise PoisonRecord(f"{what}: {describe(e)}") from None
    except (MemoryError, RecursionError):
        raise  # the process is in trouble, not the record
    except Exception as e:
        raise PoisonRecord(one_line(f"{what}: {type(e).__name__}: {e}")) from None


def one_line(text: str, limit: int = 500) -> str:
    """Text as one printable line of at most `limit` characters (reasons are read in logs and headers)."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def encode(message: Message) -> bytes:
    return message.model_dump_json().encode()


def ride_key(ride_id: UUID) -> bytes:
    return str(ride_id).encode()


def decode(model: type[M], key: bytes | None, value: bytes | None) -> M:
    """Parse and validate one record, or raise PoisonRecord saying why in one line."""
    if value is None:
        raise PoisonRecord("empty value (tombstone): expected a JSON object")
    try:
        message = model.model_validate_json(value)
    except ValidationError as e:
        raise PoisonRecord(describe(e)) from None
    if key != ride_key(message.ride_id):
        raise PoisonRecord(f"key {key!r:.80} is not the ride_id {message.ride_id}")
    return message


def describe(error: ValidationError, limit: int = 500) -> str:
    """A ValidationError as one line: where each problem is and what it is, never the hostile input."""
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
        for e in error.errors(include_input=False, include_url=False)
    ]
    text = f"{error.title} invalid: " + "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."
