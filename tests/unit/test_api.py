"""api.py's domain, without a broker: the POST body, the ride_id an Idempotency-Key makes, the request it
publishes, and the one-line 422s. (The service itself is tested against the real broker:
tests/integration/test_api.py.)"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

import api
from common import city

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
BODY = {"customer_id": "cust-1", "customer_email": "ada@example.com", "customer_name": "Ada Lovelace",
        "pickup": {"lat": 40.758, "lon": -73.9855}, "dropoff": {"lat": 40.7069, "lon": -74.0113}, "passengers": 2}


def form(**changes) -> api.RideForm:
    return api.RideForm.model_validate_json(json.dumps({**BODY, **changes}))


def problem(body: dict | bytes) -> str:
    with pytest.raises(ValidationError) as e:
        api.RideForm.model_validate_json(body if isinstance(body, bytes) else json.dumps(body))
    return api.form_problem(e.value)


def test_the_same_idempotency_key_of_the_same_customer_is_the_same_ride():
    assert api.ride_id_for(form(), "key-1") == api.ride_id_for(form(), "key-1")
    assert api.ride_id_for(form(), "key-1") != api.ride_id_for(form(), "key-2")
    assert api.ride_id_for(form(), "key-1") != api.ride_id_for(form(customer_id="cust-2"), "key-1")
    assert api.ride_id_for(form(), None) != api.ride_id_for(form(), None)  # no key: a new ride each time
    chosen = uuid.uuid4()
    assert api.ride_id_for(form(ride_id=str(chosen)), "key-1") == chosen  # the client's own id wins


def test_the_published_request_has_the_services_zones_and_time():
    ride_id = uuid.uuid4()
    request = api.request_of(form(), ride_id, NOW)
    assert request.ride_id == ride_id and request.requested_at == NOW and request.passengers == 2
    assert request.pickup.zone == city.zone_of(40.758, -73.9855) != city.OUTSIDE
    assert request.dropoff.zone == city.zone_of(40.7069, -74.0113)
    outside = api.request_of(form(pickup={"lat": 40.7178, "lon": -74.0431}), ride_id, NOW)  # Jersey City
    assert outside.pickup.zone == city.OUTSIDE  # a valid request: transaction.py rejects it with the reason


@pytest.mark.parametrize(("change", "named"), [
    ({"pickup": {"lat": 91, "lon": 0}}, "pickup.lat: Input should be less than or equal to 90"),
    ({"pickup": {"lat": 40.7}}, "pickup.lon: Field required"),
    ({"customer_email": "a,b@example.com"}, "customer_email: not in the expected format"),
    ({"customer_name": ""}, "customer_name: String should have at least 1 character"),
    ({"passengers": 9}, "passengers: Input should be less than or equal to 8"),
    ({"zone": "Midtown"}, "zone: Extra inputs are not permitted"),
    ({"ride_id": "not-a-uuid"}, "ride_id: Input should be a valid UUID"),
    ({"pickup": {"lat": "40.7", "lon": -73.98}}, "pickup.lat: Input should be a valid number"),  # strict: no coercion
    ({"passengers": True}, "passengers: Input should be a valid integer"),
])
def test_a_bad_body_is_one_line_naming_each_field(change, named):
    text = problem({**BODY, **change})
    assert named in text and "\n" not in text and "[A-Za-z" not in text  # no regex dumped on the client


def test_a_body_that_is_not_json_or_not_an_object_says_so():
    assert "Invalid JSON" in problem(b"{oops")
    assert problem(b"[1, 2]").startswith("body: Input should be an object")


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "a\nb"])
def test_an_unusable_idempotency_key_is_refused(key):
    assert api.idempotency_problem(key) == "Idempotency-Key: must be 1 to 255 printable ASCII characters"


def test_a_usable_or_absent_idempotency_key_is_fine():
    assert api.idempotency_problem(None) is None and api.idempotency_problem(str(uuid.uuid4())) is None


@pytest.mark.parametrize(("host", "name"), [("127.0.0.1:8000", "127.0.0.1"), ("localhost", "localhost"),
                                            ("[::1]:8000", "::1"), ("attacker.example:8000", "attacker.example"),
                                            ("", "")])
def test_the_host_headers_name_without_its_port(host, name):
    assert api.hostname(host) == name
    assert (name in api.LOOPBACK) == (name in ("127.0.0.1", "localhost", "::1"))
