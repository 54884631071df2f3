"""common.cli.parse_summary: how the demo, the bench and the tests read a script's closing line."""

from __future__ import annotations

import pytest

from common.cli import parse_summary

LOG = """2026-11-22 05:21:33,016 INFO    __main__: progress: confirmed=42 rejected=0
2026-11-22 05:21:37,156 INFO    __main__: summary: requested=200 acknowledged=199 failed=1 rate=40.1/s seed=7 mode=x
"""


def test_the_last_summary_line_with_typed_values():
    older = "2026-11-22 05:00:00,000 INFO    __main__: summary: requested=1 acknowledged=1\n"
    assert parse_summary(older + LOG) == {"requested": 200, "acknowledged": 199, "failed": 1, "rate": 40.1,
                                          "seed": 7, "mode": "x"}


def test_no_summary_line_is_an_error():
    with pytest.raises(ValueError, match="no 'summary:' line"):
        parse_summary(LOG.splitlines()[0])
