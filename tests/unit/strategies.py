"""Hypothesis strategies for the pipeline's messages: any valid message the schemas accept."""

from datetime import datetime, timedelta, timezone

from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from common.schemas import EMAIL_PATTERN, Email, Place, RideConfirmed, RideRejected, RideRequest

_email = TypeAdapter(Email)


def _valid_email(value: str) -> bool:
    try:
        _email.validate_python(value)
    except ValidationError:
        return False
    return True


identifiers = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)
# Anything the schema's Email takes, from its own pattern (length and the encoded-word rule on top).
emails = st.from_regex(EMAIL_PATTERN, fullmatch=True).filter(_valid_email)
# Local parts that look like RFC 2047 encoded words: made of allowed characters, the schema must refuse them.
encoded_word_emails = st.builds(
    lambda head, charset, code, text, tail, domain: f"{head}=?{charset}?{code}?{text}?={tail}@{domain}",
    st.sampled_from(["", "a", "x."]), st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "us-ascii"]),
    st.sampled_from("qQbB"), st.from_regex(r"[A-Za-z0-9=_+/-]{0,40}", fullmatch=True),
    st.sampled_from(["", "b", ".c"]), st.from_regex(r"[a-z0-9-]{1,20}\.[a-z]{2,6}", fullmatch=True),
)
# Any name the schema takes: one printable line, in any script.
names = st.none() | st.text(min_size=1, max_size=100).filter(lambda s: s.isprintable() and s.strip() != "")
offsets = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-23 * 60, 23 * 60))
aware_datetimes = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1),
                               timezones=st.one_of(st.just(timezone.utc), offsets))
places = st.builds(
    Place,
    lat=st.floats(-90, 90, allow_nan=False),
    lon=st.floats(-180, 180, allow_nan=False),
    zone=st.text(min_size=1, max_size=64),
)
ride_requests = st.builds(
    RideRequest,
    ride_id=st.uuids(),
    customer_id=identifiers,
    customer_email=emails,
    customer_name=names,
    pickup=places,
    dropoff=places,
    passengers=st.integers(1, 8),
    requested_at=aware_datetimes,
)


@st.composite
def ride_confirmations(draw) -> RideConfirmed:
    request = draw(ride_requests)
    return RideConfirmed(
        **request.model_dump(),
        driver_id=draw(identifiers),
        distance_km=draw(st.floats(0, 500, allow_nan=False)),
        pickup_eta_minutes=draw(st.floats(0, 240, allow_nan=False)),
        fare=draw(st.decimals(0, 100_000, places=2, allow_nan=False, allow_infinity=False)),
        currency=draw(st.from_regex(r"[A-Z]{3}", fullmatch=True)),
        confirmed_at=draw(aware_datetimes),
    )


@st.composite
def ride_rejections(draw) -> RideRejected:
    request = draw(ride_requests)
    return RideRejected(ride_id=request.ride_id, customer_id=request.customer_id,
                        reason=draw(st.text(min_size=1, max_size=500)), rejected_at=draw(aware_datetimes),
                        request=request)


# Any JSON value, for replacing fields with values of the wrong type.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
