"""What the four pipeline scripts share: settings, topics, schemas, Kafka clients, the consume loop.

Nothing in this package reads os.environ except common.settings, and nothing in it configures logging
except common.cli and the command-line entry points. The developer tools (the local broker, the
dead-letter tool, the demo) live in tools/.
"""

# The project's top-level email.py shadows the standard library's `email` package for anything run from
# the project root. Importing any part of common puts the real package in place first, so every entry
# point (`python -m tools.dlq`, bench/, a new script) is safe. See common/stdlib_email.py.
from common import stdlib_email as _stdlib_email  # noqa: F401
