"""The launcher's one-line failures that need no running broker, and its small pure helpers."""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import broker

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, path: str, extra_env: dict | None = None, timeout: float = 120):
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "KAFKA_HOME", "MAVEN_OPTS")}
    env["PATH"] = path
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "tools.broker", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_failure(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert a launcher failure: non-zero, no traceback, one `error:` line with a Fix naming each needle."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("tools.broker: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Fix:" in errors[0]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _bin_with(tmp_path: Path, **tools: str) -> Path:
    """A PATH folder holding only the given tools (name -> real path or a shell script body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, target in tools.items():
        if target.startswith("#!"):
            (bin_dir / name).write_text(target)
            (bin_dir / name).chmod(0o755)
        else:
            (bin_dir / name).symlink_to(target)
    return bin_dir


def test_help_works_without_java_or_kafka(tmp_path):
    proc = _run("--help", path=str(_bin_with(tmp_path)))
    assert proc.returncode == 0
    assert "--port" in proc.stdout and "--data-dir" in proc.stdout and "--fresh" in proc.stdout


def test_no_java(tmp_path):
    proc = _run("--port", "0", "--data-dir", str(tmp_path / "d"), path=str(_bin_with(tmp_path)))
    one_line_failure(proc, "no Java found", "JDK 17")


def test_java_older_than_17(tmp_path):
    old_java = '#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n'
    proc = _run("--port", "0", "--data-dir", str(tmp_path / "d"), path=str(_bin_with(tmp_path, java=old_java)))
    one_line_failure(proc, "Java 11 found", "needs Java 17+")


def test_java_8_version_string(tmp_path):
    old_java = '#!/bin/sh\necho \'java version "1.8.0_392"\' >&2\n'
    assert broker.java_major_version(str(_bin_with(tmp_path, java=old_java) / "java")) == 8


@pytest.fixture
def real_java():
    java = shutil.which("java")
    if java is None or broker.java_major_version(java) < broker.MIN_JAVA:
        pytest.skip("needs Java 17+ on PATH")
    return java


def test_neither_maven_nor_kafka_home(tmp_path, real_java):
    proc = _run(
        "--port", "0", "--data-dir", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "empty-cache"),
        path=str(_bin_with(tmp_path, java=real_java)),
    )  # fmt: skip
    one_line_failure(proc, "neither Maven nor KAFKA_HOME", "KAFKA_HOME")


def test_kafka_home_without_jars(tmp_path, real_java):
    proc = _run(
        "--port", "0", "--data-dir", str(tmp_path / "d"),
        path=str(_bin_with(tmp_path, java=real_java)),
        extra_env={"KAFKA_HOME": str(tmp_path / "not-kafka")},
    )  # fmt: skip
    one_line_failure(proc, "has no libs/kafka_2.13-", "KAFKA_HOME")


def test_jars_cannot_be_resolved_offline(tmp_path, real_java):
    mvn = shutil.which("mvn")
    if mvn is None:
        pytest.skip("needs Maven")
    # A real Maven, offline, with an empty local repository: exactly a first run without network.
    home = tmp_path / "home"
    (home / ".m2").mkdir(parents=True)
    (home / ".m2" / "settings.xml").write_text("<settings><offline>true</offline></settings>\n")
    proc = _run(
        "--resolve-only", "--cache-dir", str(tmp_path / "cache"),
        path=str(_bin_with(tmp_path, java=real_java, mvn=mvn)),
        extra_env={"MAVEN_OPTS": f"-Duser.home={home}", "HOME": str(home)},
    )  # fmt: skip
    one_line_failure(proc, "Maven could not resolve the Kafka", "offline", "KAFKA_HOME")
    assert not (tmp_path / "cache" / ".resolved").exists(), "a failed resolution must not be marked done"


def test_cluster_id_is_22_chars_of_base64url_uuid_never_starting_with_a_dash():
    for _ in range(2000):  # ~1 in 64 random ids starts with "-"; the storage tool reads those as options
        cid = broker._new_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_log_quote_keeps_messages_and_drops_stack_frames():
    log = "old run\n===== tools.broker: starting X\nINFO a\nERROR boom\njava.lang.X: why\n\tat a.b(C.java:1)\n"
    text = broker._tail(log.rpartition(broker._BANNER)[2])
    assert "why" in text and "at a.b" not in text and "old run" not in text


def test_a_data_dir_in_use_is_refused_before_anything_in_it_is_touched(tmp_path):
    # What a running launcher holds: a flock on the data dir itself. A second launcher on that dir must
    # not rewrite its launcher.json (the port), its configs or its data, nor even look for Java first.
    data = tmp_path / "data"
    data.mkdir()
    (data / "launcher.json").write_text('{"port": 19092, "controller_port": 19093, "cluster_id": "x"}\n')
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    held = os.open(data, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = _run("--port", "0", "--data-dir", str(data), path=str(_bin_with(tmp_path)))
        one_line_failure(proc, f"data dir {data} is in use", "--data-dir")
        proc = _run("--port", "0", "--data-dir", str(data), "--fresh", path=str(_bin_with(tmp_path)))
        one_line_failure(proc, f"data dir {data} is in use")
    finally:
        os.close(held)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
