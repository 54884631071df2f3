"""How every script starts and ends: flags made from its settings, logging to stderr, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar, get_origin

from pydantic import AliasChoices, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import CliSettingsSource

from common.errors import Fatal, Interrupted
from common.settings import Settings

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Settings)


def parser(description: str | None) -> argparse.ArgumentParser:
    """Settings' flags in a parser of your own, each None unless given: the shared flags of tools/dlq.py's
    subcommands (which then hands them to load())."""
    p = argparse.ArgumentParser(description=description)
    CliSettingsSource(Settings, root_parser=p, add_argument_method=_flag_adder(Settings), cli_kebab_case=True)
    p.set_defaults(**dict.fromkeys(Settings.model_fields))
    return p


def load(settings_cls: type[S], argv: Sequence[str] | None = None, doc: str | None = None) -> S:
    """Parse the flags generated from settings_cls' fields and build the one settings object (flag >
    environment > .env > default). `doc`'s first paragraph describes the script in --help. A bad value,
    from any of them, prints usage and one line and exits 2."""
    p = argparse.ArgumentParser(description=(doc or "").strip().split("\n\n")[0])
    flags: CliSettingsSource[argparse.ArgumentParser] = CliSettingsSource(
        settings_cls, root_parser=p, add_argument_method=_flag_adder(settings_cls),
        cli_kebab_case=True,  # --bootstrap-servers, not --bootstrap_servers
        cli_implicit_flags="toggle",  # a bool that defaults to off is a plain --flag
        cli_parse_none_str="\0")  # no value means None: "null" (the default) is text like any other
    given = flags(args=list(sys.argv[1:] if argv is None else argv))
    for name in given():
        if _extra(settings_cls.model_fields[name]).get("env_only") if name in settings_cls.model_fields else False:
            p.error(f"--{name.replace('_', '-')} is not a flag: a command line is visible to every user of the "
                    f"machine (`ps`); set {' or '.join(env_names(name, settings_cls.model_fields[name]))} instead")
    # A flag-only setting (a consumer group) takes its flag or its default, never the environment or .env:
    # one RIDES_GROUP_ID would put every consumer in one group. Keyword arguments beat those sources.
    fixed = {name: field.default for name, field in settings_cls.model_fields.items()
             if _extra(field).get("flag_only") and name not in given()}
    try:
        settings = settings_cls(_cli_settings_source=given, **fixed)
    except ValidationError as e:
        p.error(_one_line(e, settings_cls))  # prints usage and one line, exits 2
    logging.getLogger().setLevel(settings.log_level)
    if settings.password:
        # kafka-python logs its clients' whole configuration at DEBUG, the SASL password with it.
        for handler in logging.getLogger().handlers:
            handler.addFilter(Redact(settings.password))
    # kafka-python logs every refused connection as an error, so a broker restart would bury the
    # script's own lines; our code reports what matters from the exceptions it gets.
    logging.getLogger("kafka").setLevel(logging.DEBUG if settings.log_level == "DEBUG" else logging.CRITICAL)
    return settings


class Redact(logging.Filter):
    """Hides a secret wherever it would appear in a log line (a library's own messages included)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "[hidden]"), None
        return True


def env_names(name: str, field: FieldInfo) -> list[str]:
    """The environment variables (and .env keys) a field is read from: its aliases after its own name (the
    standard names, such as SMTP_HOST), else RIDES_<NAME>; none for a flag-only field."""
    if _extra(field).get("flag_only"):
        return []
    if isinstance(field.validation_alias, AliasChoices):
        return [str(alias).upper() for alias in field.validation_alias.choices[1:]]
    return [f"RIDES_{name.upper()}"]


def _flag_adder(settings_cls: type[Settings]) -> Callable[..., argparse.Action]:
    """pydantic-settings calls this to add each field's flag. It would also make a flag of every alias
    (--KAFKA-BOOTSTRAP-SERVERS): only the field's own name becomes one, with the field's metavar and help."""

    def add(parser: argparse.ArgumentParser, *names: str, dest: str, help: str, **kwargs: Any) -> argparse.Action:
        field = settings_cls.model_fields[dest]
        extra = _extra(field)
        if "metavar" in kwargs and get_origin(field.annotation) is not Literal:  # a Literal's shows its choices
            kwargs["metavar"] = extra.get("metavar", dest.upper())
        text = field.description or ""
        if "default" not in text:  # a field whose default needs words says it in its description
            default = field.default
            shown = "none" if default in (None, "") else f"{default:g}" if isinstance(default, float) else default
            text += f" (default: {shown})"
        if env_names(dest, field):
            text += f" [env: {', '.join(env_names(dest, field))}]"
        if extra.get("env_only"):  # parsed only to refuse it with a reason (load()); not shown
            text = argparse.SUPPRESS
        return parser.add_argument("--" + dest.replace("_", "-"), dest=dest, help=text, **kwargs)

    return add


def _one_line(error: ValidationError, settings_cls: type[Settings]) -> str:
    """`--flag (or ITS_VARIABLE): what is wrong`, for each problem, on one line; just what is wrong when it is
    about several settings together."""
    names = {alias: name for name, field in settings_cls.model_fields.items()
             for alias in (field.validation_alias.choices if isinstance(field.validation_alias, AliasChoices)
                           else [name])}
    problems = []
    for err in error.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        name = names.get(str(err["loc"][0])) if err["loc"] else None
        if name is None:
            problems.append(msg)
        else:
            variables = " or ".join(env_names(name, settings_cls.model_fields[name]))
            flag = f"--{name.replace('_', '-')}" + (f" (or {variables})" if variables else "")
            problems.append(f"{flag}: {msg}")
    return "; ".join(problems)


def run(main: Callable[[], int | None]) -> None:
    """Run a script's main(): logs to stderr, turns every failure into one line and a non-zero exit."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # until load() knows the log level
    try:
        code = main()
    except Interrupted:
        log.info("stopped before starting work")
        code = 0
    except Fatal as e:
        log.error("%s", e)
        code = 1
    except Exception as e:  # unexpected: stop with a clear line; the traceback only with --log-level DEBUG
        log.error("stopped by an unexpected error: %s: %s", type(e).__name__, e)
        log.debug("traceback", exc_info=True)
        code = 1
    sys.exit(code or 0)


_SUMMARY = re.compile(r"summary: (.*)$", re.MULTILINE)
_PAIR = re.compile(r"(\w+)=(\S+)")


def parse_summary(log: str) -> dict[str, int | float | str]:
    """The key=value pairs of the last `summary: k=v k=v ...` line a script logged when it stopped.

    Integers become int, numbers with a dot become float (a trailing unit such as "/s" is dropped),
    anything else stays a string. Raises ValueError if there is no summary line.
    """
    lines = _SUMMARY.findall(log)
    if not lines:
        raise ValueError("no 'summary:' line")
    result: dict[str, int | float | str] = {}
    for key, raw in _PAIR.findall(lines[-1]):
        number = re.fullmatch(r"(-?\d+(?:\.\d+)?)(?:/\w+)?", raw)
        if number and "." in number.group(1):
            result[key] = float(number.group(1))
        elif number:
            result[key] = int(number.group(1))
        else:
            result[key] = raw
    return result


def _extra(field: FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
