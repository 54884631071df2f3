"""The developer tools: the local Kafka broker launcher (`python -m tools.broker`), the dead-letter and
topic viewer (`python -m tools.dlq`) and `make demo` (tools/demo.py). The pipeline never needs them at run
time; they use common/, never the other way round.
"""

# Like common/: `python -m tools.X` runs with the project root on sys.path, where email.py would shadow the
# standard library's `email` package. Importing common first puts the real package in place.
import common  # noqa: F401
