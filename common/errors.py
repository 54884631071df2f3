"""The exceptions that decide what happens next: stop with one line, stop cleanly, or set a record aside.

No Kafka here: every layer of common/ raises and catches these.
"""

from __future__ import annotations


class Fatal(Exception):
    """The script cannot do its job; the message is the one line the user sees, with what to do."""


class Interrupted(Exception):
    """Asked to stop (SIGINT/SIGTERM) before there was any work to finish: a clean exit."""


class Stopped(Exception):
    """Asked to stop in the middle of a batch that cannot be finished in time (say, Kafka unreachable, or
    an email waiting to be retried): nothing of what is unfinished is committed, the next run does it."""


class PoisonRecord(ValueError):
    """A record that can never be processed: it goes to the dead-letter topic with this reason."""
