"""The email.py trap (docs/architecture.md, "The email.py trap"): a top-level email.py shadows the standard library's
`email` package wherever the project root is on sys.path. Every entry point must still work; these tests
run each one for real, from the project root, as a user would type it."""

import email
import http.client
import importlib.metadata
import os
import shutil
import smtplib
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
# One quick test of a file that loads email.py by path: the run imports pytest, pluggy, hypothesis,
# pydantic and kafka with the project root on sys.path, which is where the trap bites.
ONE_TEST = ["tests/unit/test_email.py", "-k", "test_the_message_id_domain_is_the_senders"]


def run(argv: list[str], cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIDES_", "PYTEST_", "PYTHONPATH"))}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_python_email_py_help_works_from_the_root():
    result = run([sys.executable, "email.py", "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: email.py")
    assert "--outbox" in result.stdout and "Traceback" not in result.stderr


def test_python_dash_m_pytest_works_from_the_root():
    # `python -m pytest` puts the project root first on sys.path before pytest imports importlib.metadata.
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ONE_TEST])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout


def test_the_pytest_entry_point_works_from_the_root():
    pytest_bin = shutil.which("pytest", path=str(Path(sys.executable).parent))
    if pytest_bin is None:
        pytest.skip(f"no pytest entry point next to {sys.executable}")
    result = run([pytest_bin, "-q", "-p", "no:cacheprovider", *ONE_TEST])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout


def test_other_programs_run_from_the_root_get_the_standard_library_email():
    # rides.py, transaction.py, analysis.py, python -m tools.dlq ...: their first `import email` comes
    # from deep inside pydantic, http.client or hypothesis, half-way through those imports.
    code = ("import pydantic_settings, http.client, smtplib, hypothesis, importlib.metadata, email; "
            "print(email.__file__); print(importlib.metadata.version('kafka-python'))")
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    stdlib_email, version = result.stdout.split()
    assert Path(stdlib_email).resolve() == STDLIB / "email" / "__init__.py"
    assert version.startswith("3.")


@pytest.mark.parametrize("tool", ["tools.dlq", "tools.broker"])
def test_the_developer_tools_run_from_the_root(tool):
    # `python -m tools.X` puts the project root first on sys.path; the tools package guards like common.
    result = run([sys.executable, "-m", tool, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {tool}")


def test_importing_the_tools_package_puts_the_standard_library_email_first():
    result = run([sys.executable, "-c", "import tools, email; print(email.__file__)"])
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).resolve() == STDLIB / "email" / "__init__.py"


def test_in_this_process_email_is_the_standard_library_package():
    assert hasattr(email, "__path__")
    assert Path(email.__file__).resolve().parent == STDLIB / "email"
    assert callable(smtplib.SMTP) and callable(http.client.HTTPConnection)
    assert importlib.metadata.version("pytest")
    from email.message import EmailMessage

    assert EmailMessage().get_content_type() == "text/plain"


def test_without_the_guard_the_trap_is_real(tmp_path):
    # The same project with email.py's first line removed: `python email.py --help` fails. This is what the
    # guard prevents, and why the line must stay first.
    shutil.copytree(ROOT / "common", tmp_path / "common", ignore=shutil.ignore_patterns("__pycache__"))
    source = (ROOT / "email.py").read_text()
    guard = "import common.stdlib_email  # noqa: F401"
    assert any(line.startswith(guard) for line in source.splitlines())
    (tmp_path / "email.py").write_text("\n".join(
        line for line in source.splitlines() if not line.startswith(guard)))
    result = run([sys.executable, "email.py", "--help"], cwd=tmp_path)
    assert result.returncode != 0
    assert "'email' is not a package" in result.stderr


def test_without_part_two_of_the_guard_other_programs_break(tmp_path):
    # Why email.py imports Kafka, pydantic and common/ only when it runs as itself: an email.py that
    # imports them unconditionally breaks every program whose first `import email` comes from within a
    # library (here pydantic_settings, as pytest's plugin loading does through importlib.metadata), even
    # with the first line in place: email.py would re-enter the library's half-finished import.
    shutil.copytree(ROOT / "common", tmp_path / "common", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "email.py").write_text("import common.stdlib_email  # noqa: F401\n"
                                       "from common.settings import ConsumerSettings  # noqa: F401\n")
    result = run([sys.executable, "-c", "import pydantic_settings"], cwd=tmp_path)
    assert result.returncode != 0
    assert "partially initialized module" in result.stderr


def test_the_guard_is_the_first_import_of_email_py():
    lines = (ROOT / "email.py").read_text().splitlines()
    imports = [line for line in lines if line.startswith(("import ", "from "))]
    assert imports[0].startswith("import common.stdlib_email  # noqa: F401")
