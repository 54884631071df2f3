"""The fuzz test's record generator (tests/integration/hostile.py): seeded, every record refused or
accepted by common.schemas as promised, and within Kafka's record size limit."""

from __future__ import annotations

import random

import pytest

from common import schemas
from common.schemas import PoisonRecord, RideConfirmed, RideRequest
from tests.integration import hostile

KAFKA_MAX_RECORD = 1_000_000  # a little under the broker's and producer's default of 1 MiB


@pytest.fixture(scope="module")
def requests():
    return hostile.hostile_requests(random.Random(7), 300)


@pytest.fixture(scope="module")
def confirmations():
    return hostile.hostile_confirmations(random.Random(7), 150)


def test_same_seed_same_records(requests):
    assert hostile.hostile_requests(random.Random(7), 300) == requests
    assert hostile.hostile_requests(random.Random(8), 300) != requests


@pytest.mark.parametrize("model, which", [(RideRequest, "requests"), (RideConfirmed, "confirmations")])
def test_every_hostile_record_is_refused_with_a_one_line_reason(model, which, request):
    for f in request.getfixturevalue(which):
        with pytest.raises(PoisonRecord) as e:
            schemas.decode(model, f.key, f.value)
        assert "\n" not in str(e.value) and len(str(e.value)) <= 500, f.kind


def test_every_kind_is_made_and_fits_in_a_kafka_record(requests, confirmations):
    for records, mutations in [(requests, hostile.REQUEST_MUTATIONS), (confirmations, hostile.CONFIRMED_MUTATIONS)]:
        assert len({f.kind for f in records}) == len(mutations)
        assert all(len(f.value or b"") + len(f.key or b"") < KAFKA_MAX_RECORD for f in records)
    assert max(len(f.value or b"") for f in requests) > 100_000  # oversized strings and deep nesting are big
    assert any(f.value is None for f in requests) and any(f.key is None for f in requests)
    assert any(k == "dlq.reason" for f in requests for k, _ in f.headers)  # forged dead-letter headers


def test_odd_but_valid_messages_decode():
    rng = random.Random(3)
    for m in hostile.odd_requests(rng):
        assert schemas.decode(RideRequest, schemas.ride_key(m.ride_id), schemas.encode(m)) == m
    for m in hostile.odd_confirmations(rng):
        assert schemas.decode(RideConfirmed, schemas.ride_key(m.ride_id), schemas.encode(m)) == m
