"""Creating the pipeline's topics: what is a pause (retried by common.clients.connect) and what is an error."""

import pytest
from kafka.errors import InvalidReplicationFactorError, KafkaTimeoutError, TopicAuthorizationFailedError

from common import clients, topics
from common.settings import Settings


class Admin:
    """Answers create_topics with one error code, as a broker does."""

    def __init__(self, code: int, message: str) -> None:
        self.code, self.message = code, message

    def list_topics(self):
        return []

    def create_topics(self, specs, raise_errors=False):
        return {"topics": [{"name": n, "error_code": self.code, "error_message": self.message} for n in specs]}


def test_a_broker_still_registering_is_a_pause_not_an_error():
    # Seen in CI: transaction.py started while the broker restarted died on it at once.
    admin = Admin(InvalidReplicationFactorError.errno, "only 0 broker(s) are registered")
    with pytest.raises(KafkaTimeoutError, match="only 0 broker") as e:
        clients.create_topics(admin, Settings(), [topics.RIDE_DETAILS])
    assert e.value.retriable


def test_a_real_refusal_is_not_retried():
    admin = Admin(TopicAuthorizationFailedError.errno, "not authorized")
    with pytest.raises(TopicAuthorizationFailedError):
        clients.create_topics(admin, Settings(), [topics.RIDE_DETAILS])
