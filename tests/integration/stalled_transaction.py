"""transaction.py stopped just before it commits its first transaction (which has rides in it):

    python tests/integration/stalled_transaction.py stop <transaction.py's flags>
        freezes (SIGSTOP of itself, as a long GC pause or a stalled VM would); once continued (SIGCONT)
        it commits that batch and exits;
    python tests/integration/stalled_transaction.py kill <transaction.py's flags>
        dies (SIGKILL of itself) with that transaction open: its outputs and decided rides written, none
        committed.
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
    os.kill(os.getpid(), signal.SIGSTOP if HOW == "stop" else signal.SIGKILL)
    commit(self)
    print("committed after the stall", file=sys.stderr, flush=True)
    os._exit(0)


HOW = sys.argv[1]
KafkaProducer.commit_transaction = stalled_commit
sys.argv = [str(ROOT / "transaction.py"), *sys.argv[2:]]
runpy.run_path(str(ROOT / "transaction.py"), run_name="__main__")
