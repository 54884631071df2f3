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
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.append(str(ROOT))  # appended: the project's email.py must not shadow the standard library's
import common.stdlib_email  # noqa: E402, F401

# isort: split
from kafka.producer.transaction_manager import TransactionManager  # noqa: E402

# common.transform sends the commit through the producer's transaction manager (and awaits it a second at a
# time): the stall goes where the commit begins.
begin_commit = TransactionManager.begin_commit


def stalled_commit(self: TransactionManager):
    print("stalled before commit_transaction", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGSTOP if HOW == "stop" else signal.SIGKILL)
    result = begin_commit(self)

    def exit_once_committed() -> None:
        result.wait()
        print("committed after the stall", file=sys.stderr, flush=True)
        os._exit(0)

    threading.Thread(target=exit_once_committed, daemon=True).start()
    return result


HOW = sys.argv[1]
TransactionManager.begin_commit = stalled_commit
sys.argv = [str(ROOT / "transaction.py"), *sys.argv[2:]]
runpy.run_path(str(ROOT / "transaction.py"), run_name="__main__")
