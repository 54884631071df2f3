"""transaction.py that freezes (SIGSTOP of itself, as a long GC pause or a stalled VM would) just before it
commits its first transaction with rides in it; once continued (SIGCONT) it commits that batch and exits.

Run by tests as `python tests/integration/stalled_transaction.py <transaction.py's flags>`.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.append(str(ROOT))  # appended: the project's email.py must not shadow the standard library's
import common.stdlib_email  # noqa: E402, F401

# isort: split
from kafka import KafkaProducer  # noqa: E402

commit = KafkaProducer.commit_transaction


def stalled_commit(self: KafkaProducer) -> None:
    print("stalled before commit_transaction", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    commit(self)
    print("committed after the stall", file=sys.stderr, flush=True)
    os._exit(0)


KafkaProducer.commit_transaction = stalled_commit  # type: ignore[method-assign]
sys.argv = [str(ROOT / "transaction.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "transaction.py"), run_name="__main__")
