"""common.cli: the scripts' settings from flags, the environment and .env, one-line errors, and parse_summary
(how the demo, the bench and the tests read a script's closing line)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import analysis
import api
import rides
import transaction
from common import cli
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


# ------------------------------------------------------------------------------ settings from flags, env, .env

ROOT = Path(__file__).resolve().parents[2]


def load_email_script():
    """email.py under another name (as test_email.py loads it): `import email` stays the standard library's."""
    if "email_script" not in sys.modules:
        spec = importlib.util.spec_from_file_location("email_script", ROOT / "email.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["email_script"] = module
        spec.loader.exec_module(module)
    return sys.modules["email_script"]


em = load_email_script()
SCRIPTS = {"rides.py": rides.RidesSettings, "transaction.py": transaction.TransactionSettings,
           "email.py": em.EmailSettings, "analysis.py": analysis.AnalysisSettings, "api.py": api.ApiSettings}
CONSUMERS = ("transaction.py", "email.py", "analysis.py")
# Each script's flags as they were when each had its own argparse code (the contract: keep them), and the
# metrics flags every long-running script has since (issue 10).
SHARED = ["--bootstrap-servers HOST:PORT[,...]", "--wait SECONDS", "--topic-prefix PREFIX",
          "--log-level {DEBUG,INFO,WARNING,ERROR}", "--security-protocol {PLAINTEXT,SSL,SASL_PLAINTEXT,SASL_SSL}",
          "--sasl-mechanism {PLAIN,SCRAM-SHA-256,SCRAM-SHA-512}", "--sasl-username USER", "--sasl-password-file PATH",
          "--ssl-cafile PEM", "--ssl-certfile PEM", "--ssl-keyfile PEM", "--metrics-port PORT", "--metrics-host HOST"]
FLAGS = {
    "rides.py": SHARED + ["--count N", "--rate R", "--seed S"],
    "transaction.py": SHARED + ["--group-id GROUP_ID", "--guarantee {exactly-once,at-least-once}",
                                "--dedup-hours H", "--instance ID"],
    "email.py": SHARED + ["--group-id GROUP_ID", "--smtp-host SMTP_HOST", "--smtp-port SMTP_PORT",
                          "--smtp-user SMTP_USER", "--smtp-password SMTP_PASSWORD", "--smtp-from ADDRESS",
                          "--smtp-allow-plain-login", "--outbox DIR", "--ledger PATH"],
    "analysis.py": SHARED + ["--group-id GROUP_ID", "--state PATH", "--every SECONDS", "--minutes N"],
    "api.py": SHARED + ["--host HOST", "--port PORT", "--ack-timeout SECONDS", "--history-minutes MINUTES",
                        "--view-rides N", "--groups G1,G2,..."],
}


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """An empty current folder (no .env) and none of the scripts' variables in the environment."""
    for name in list(os.environ):
        if name.startswith(("RIDES_", "SMTP_", "KAFKA_")) or name in ("BOOTSTRAP_SERVERS",):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_flag_beats_the_environment_which_beats_dotenv_which_beats_the_default(clean, monkeypatch):
    assert cli.load(rides.RidesSettings, []).wait == 60
    (clean / ".env").write_text("RIDES_WAIT=5\nKAFKA_BOOTSTRAP_SERVERS=dotenv:1\n")
    assert (cli.load(rides.RidesSettings, []).wait, cli.load(rides.RidesSettings, []).bootstrap_servers) \
        == (5, "dotenv:1")
    monkeypatch.setenv("RIDES_WAIT", "6")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "env:1")
    s = cli.load(rides.RidesSettings, [])
    assert (s.wait, s.bootstrap_servers) == (6, "env:1")
    s = cli.load(rides.RidesSettings, ["--wait", "7", "--bootstrap-servers", "flag:1"])
    assert (s.wait, s.bootstrap_servers) == (7, "flag:1")


def test_email_reads_the_standard_smtp_variables_from_dotenv_too(clean, monkeypatch):
    (clean / ".env").write_text('SMTP_HOST=dotenv.example\nSMTP_FROM="Rides <r@rides.example>"\n'
                                "SMTP_ALLOW_PLAIN_LOGIN=true\nRIDES_OUTBOX=mail\n")
    s = cli.load(em.EmailSettings, [])
    assert (s.smtp_host, s.smtp_from, s.smtp_allow_plain_login, s.outbox) \
        == ("dotenv.example", "Rides <r@rides.example>", True, Path("mail"))
    monkeypatch.setenv("SMTP_HOST", "env.example")
    assert cli.load(em.EmailSettings, []).smtp_host == "env.example"
    assert cli.load(em.EmailSettings, ["--smtp-host", "flag.example"]).smtp_host == "flag.example"


def test_each_consumer_has_its_own_default_group():
    assert {name: SCRIPTS[name]().group_id for name in CONSUMERS} \
        == {"transaction.py": "transaction", "email.py": "email", "analysis.py": "analysis"}


def test_one_dotenv_holds_every_scripts_settings(clean):
    # Each script's own lines apply; the other scripts' lines are not errors.
    # (Not the secured cluster's example lines: a login with PLAINTEXT, or files that do not exist here, are refused
    # as they should be; test_security_settings covers them.)
    lines = ENV_EXAMPLE.read_text().replace("# RIDES_", "RIDES_").replace("# SMTP_", "SMTP_").splitlines()
    (clean / ".env").write_text("\n".join(line for line in lines if not line.startswith(("RIDES_SASL", "RIDES_SSL"))))
    for cls in SCRIPTS.values():
        cli.load(cls, [])
    assert cli.load(rides.RidesSettings, []).count == 1000
    assert cli.load(em.EmailSettings, []).smtp_host == "smtp.example.com"


@pytest.mark.parametrize("argv, env, dotenv", [
    (["--wait", "-1"], {}, ""),
    (["--rate", "x"], {}, ""),
    (["--count"], {}, ""),
    (["--wiat", "3"], {}, ""),  # a mistyped flag is an error, even though .env ignores unknown keys
    ([], {"RIDES_WAIT": "abc"}, ""),
    ([], {}, "RIDES_WAIT=abc\n"),
    ([], {}, "KAFKA_BOOTSTRAP_SERVERS=\n"),
])
def test_a_bad_value_from_any_source_is_usage_and_one_line_exit_2(clean, monkeypatch, capsys, argv, env, dotenv):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (clean / ".env").write_text(dotenv)
    with pytest.raises(SystemExit) as e:
        cli.load(rides.RidesSettings, argv, rides.__doc__)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err


def test_the_error_names_the_flag_and_its_variable(clean, monkeypatch, capsys):
    monkeypatch.setenv("RIDES_WAIT", "-1")
    with pytest.raises(SystemExit):
        cli.load(rides.RidesSettings, [])
    assert "error: --wait (or RIDES_WAIT): Input should be greater than or equal to 0\n" in capsys.readouterr().err


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_the_same_flags_as_before_and_no_others(script):
    # Run as a user would, from the project root (where email.py shadows the stdlib's email package).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIDES_", "PYTEST_", "PYTHONPATH"))}
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    usage, description = result.stdout.split("\n\n")[:2]
    assert re.findall(r"\[(--[a-z-]+(?: \S+?)?)\](?= \[|$)", " ".join(usage.split())) == FLAGS[script]
    # No other flag anywhere in the help (an alias must not become one, such as --KAFKA-BOOTSTRAP-SERVERS).
    assert set(re.findall(r"--[A-Za-z][A-Za-z-]*", result.stdout)) == {"--help"} | {f.split()[0] for f in FLAGS[script]}
    doc = Path(ROOT / script).read_text().split('"""')[1]
    assert " ".join(description.split()) == " ".join(doc.strip().split("\n\n")[0].split())


ENV_EXAMPLE = ROOT / ".env.example"


def example_sections() -> dict[str, dict[str, str]]:
    """.env.example's `# NAME=value` lines under each `# ---- title`."""
    sections: dict[str, dict[str, str]] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("# ---- "):
            current = sections.setdefault(line.removeprefix("# ---- "), {})
        elif m := re.fullmatch(r"# ([A-Z_]+)=(.*)", line):
            current[m[1]] = m[2]
    return sections


def test_env_example_lists_exactly_each_scripts_settings_with_their_defaults():
    sections = example_sections()
    assert list(sections) == ["every script", *SCRIPTS]
    for script, cls in SCRIPTS.items():
        listed = sections["every script"] | sections[script]
        assert sorted(listed) == sorted(name for field, info in cls.model_fields.items()
                                        for name in cli.env_names(field, info)), script
        for field, info in cls.model_fields.items():
            if info.default is not None and cli.env_names(field, info):  # else: an example value, or flag-only
                value = listed[cli.env_names(field, info)[0]].strip('"')
                assert cls(**{field: value}) == cls(), f"{script}: {field}={value!r} is not its default"


def test_the_consumer_group_comes_from_its_flag_only_never_from_a_shared_environment_or_dotenv(clean, monkeypatch):
    # One RIDES_GROUP_ID (or one .env line) would put transaction.py, email.py and analysis.py in one group,
    # where they would split ride_confirmed's partitions and each silently miss the others' rides.
    monkeypatch.setenv("RIDES_GROUP_ID", "shared")
    (clean / ".env").write_text("RIDES_GROUP_ID=shared-too\n")
    assert {name: cli.load(SCRIPTS[name], []).group_id for name in CONSUMERS} \
        == {"transaction.py": "transaction", "email.py": "email", "analysis.py": "analysis"}
    assert cli.load(analysis.AnalysisSettings, ["--group-id", "mine"]).group_id == "mine"
    assert cli.load(analysis.AnalysisSettings, ["--group", "short"]).group_id == "short"  # argparse's abbreviation


def test_null_is_text_like_any_other_value_not_none(clean):
    # pydantic-settings' CLI source reads "null" as None by default: --smtp-host null would then mean "no SMTP
    # server" (the outbox) and --seed null a random seed, silently.
    assert cli.load(rides.RidesSettings, ["--topic-prefix", "null"]).topic_prefix == "null"
    assert cli.load(em.EmailSettings, ["--smtp-host", "null"]).smtp_host == "null"
    with pytest.raises(SystemExit):
        cli.load(rides.RidesSettings, ["--seed", "null"])


# ------------------------------------------------------------------------------ a secured cluster


def test_a_secured_cluster_takes_its_login_from_the_environment_or_a_file_never_a_flag(clean, monkeypatch, capsys):
    monkeypatch.setenv("RIDES_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RIDES_SASL_USERNAME", "rides")
    monkeypatch.setenv("RIDES_SASL_PASSWORD", "s3cret-value")
    s = cli.load(rides.RidesSettings, [])
    assert (s.security_protocol, s.sasl_username, s.password) == ("SASL_SSL", "rides", "s3cret-value")
    assert "s3cret-value" not in repr(s) and "s3cret-value" not in str(s.model_dump())
    from common import clients

    options = clients.security(s)
    assert options["sasl_plain_password"] == "s3cret-value" and options["ssl_check_hostname"] is True
    with pytest.raises(SystemExit):
        cli.load(rides.RidesSettings, ["--sasl-password", "s3cret-value"])
    assert "--sasl-password is not a flag" in capsys.readouterr().err
    monkeypatch.delenv("RIDES_SASL_PASSWORD")
    (clean / "pw").write_text("from-a-file\n")
    assert cli.load(rides.RidesSettings, ["--sasl-password-file", str(clean / "pw")]).password == "from-a-file"


@pytest.mark.parametrize(("env", "says"), [
    ({"RIDES_SECURITY_PROTOCOL": "SASL_SSL", "RIDES_SASL_PASSWORD": "pw-9f3c"}, "needs --sasl-username"),
    ({"RIDES_SECURITY_PROTOCOL": "SASL_SSL", "RIDES_SASL_USERNAME": "u"}, "needs the password in one of"),
    ({"RIDES_SASL_USERNAME": "u", "RIDES_SASL_PASSWORD": "pw-9f3c"}, "a SASL login is set but --security-protocol is "
                                                               "PLAINTEXT"),
    ({"RIDES_SECURITY_PROTOCOL": "SSL", "RIDES_SSL_CAFILE": "/no/such/ca.pem"}, "--ssl-cafile: no such file"),
    ({"RIDES_SSL_CAFILE": "/etc/hostname"}, "TLS files are set but --security-protocol is PLAINTEXT"),
    ({"RIDES_SECURITY_PROTOCOL": "TLS"}, "--security-protocol (or RIDES_SECURITY_PROTOCOL): Input should be"),
    ({"RIDES_SECURITY_PROTOCOL": "SASL_SSL", "RIDES_SASL_USERNAME": "u", "RIDES_SASL_PASSWORD": "pw-9f3c",
      "RIDES_SASL_PASSWORD_FILE": "/etc/hostname"}, "the password is in both RIDES_SASL_PASSWORD and "
                                                    "--sasl-password-file"),
    ({"RIDES_SECURITY_PROTOCOL": "SSL", "RIDES_SSL_KEYFILE": "/etc/hostname"}, "--ssl-keyfile is the key of a client "
                                                                               "certificate: give --ssl-certfile too"),
])
def test_an_incomplete_security_setting_is_one_line(clean, monkeypatch, capsys, env, says):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as e:
        cli.load(rides.RidesSettings, [])
    assert e.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert says in error and "pw-9f3c" not in capsys.readouterr().err + error  # the password is never echoed


def test_the_sasl_password_is_hidden_from_every_log_line_even_at_debug(clean, monkeypatch, capsys):
    import logging

    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        monkeypatch.setenv("RIDES_SECURITY_PROTOCOL", "SASL_SSL")
        monkeypatch.setenv("RIDES_SASL_USERNAME", "rides")
        monkeypatch.setenv("RIDES_SASL_PASSWORD", "pw-7d1e-secret")
        cli.load(rides.RidesSettings, ["--log-level", "DEBUG"])
        # What kafka-python's admin client logs at DEBUG: its configuration, the password in it.
        logging.getLogger("kafka.admin.client").debug("Starting with configuration: %s",
                                                      {"sasl_plain_password": "pw-7d1e-secret"})
        err = capsys.readouterr().err
        assert "sasl_plain_password" in err and "[hidden]" in err and "pw-7d1e-secret" not in err
    finally:
        root.removeHandler(handler)
        root.setLevel(logging.WARNING)
