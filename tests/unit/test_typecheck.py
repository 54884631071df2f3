"""make lint's mypy and the email trap: from the project root, `email` must still be the standard library's
package for every other file, and email.py must still be type-checked, as itself (pyproject.toml [tool.mypy])."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def mypy(*args: str | Path, cache: Path) -> list[str]:
    """mypy with the project's configuration, run from the project root as `make lint` runs it: its errors."""
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), *map(str, args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if ": error: " in line]


def test_a_file_checked_from_the_project_root_gets_the_standard_library_email_package(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from email import message_from_bytes, policy\n"
                     "from email.utils import parseaddr\n"
                     "\n"
                     "message_from_bytes(b'')\n"
                     "wrong: int = policy.default\n"
                     "also_wrong: int = parseaddr('x')\n")
    errors = mypy(probe, cache=tmp_path / "cache")
    # Not "Module 'email' has no attribute 'message_from_bytes'" (our email.py), and the stdlib's types are
    # checked: both wrong lines are found.
    assert [e.split(":")[1] for e in errors] == ["5", "6"], errors


def test_email_py_is_type_checked_by_its_own_run(tmp_path):
    broken = tmp_path / "email.py"
    broken.write_text((ROOT / "email.py").read_text() + "\n\nwrong: int = EmailSettings\n")
    errors = mypy("--shadow-file", "email.py", broken, "email.py", cache=tmp_path / "cache")
    assert len(errors) == 1 and errors[0].startswith("email.py:") and "EmailSettings" in errors[0], errors
