"""How every script starts and ends: shared flags, logging to stderr, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from pydantic import ValidationError

from common.settings import Settings

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Settings)


class Fatal(Exception):
    """The script cannot do its job; the message is the one line the user sees, with what to do."""


class Interrupted(Exception):
    """Asked to stop (SIGINT/SIGTERM) before there was any work to finish: a clean exit."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless its help already says it: flags default to None (so that the
    environment can apply), and "(default: None)" after "(default: 60)" would be wrong."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser(description: str | None, *, group_id: str | None = None) -> argparse.ArgumentParser:
    """The flags every script shares; consumers pass their default consumer group."""
    p = argparse.ArgumentParser(
        description=(description or "").strip().split("\n\n")[0],
        formatter_class=_HelpFormatter,
    )
    # Flags default to None so that the environment and then Settings' defaults apply.
    p.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]",
                   help="Kafka brokers (default: $KAFKA_BOOTSTRAP_SERVERS, else localhost:9092)")
    p.add_argument("--wait", type=float, metavar="SECONDS",
                   help="how long to keep retrying while Kafka is unreachable at start (default: 60)")
    p.add_argument("--topic-prefix", metavar="PREFIX",
                   help="prepended to every topic name, to run side by side on one cluster (default: none)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: INFO")
    if group_id is not None:
        p.add_argument("--group-id", help=f"consumer group (default: {group_id})")
        p.set_defaults(group_id=group_id)
    return p


def load(settings_cls: type[S], p: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> S:
    """Parse flags, then build the one settings object (flags > environment > defaults)."""
    args = p.parse_args(argv)
    given = {name: value for name, value in vars(args).items() if value is not None}
    try:
        settings = settings_cls(**given)
    except ValidationError as e:
        problems = "; ".join(  # "--flag: what is wrong", or just what is wrong when it is about several
            ("--" + "-".join(str(x) for x in err["loc"]).replace("_", "-") + ": " if err["loc"] else "")
            + err["msg"].removeprefix("Value error, ") for err in e.errors(include_url=False)
        )
        p.error(problems)  # prints usage and one line, exits 2
    logging.getLogger().setLevel(settings.log_level)
    # kafka-python logs every refused connection as an error, so a broker restart would bury the
    # script's own lines; our code reports what matters from the exceptions it gets.
    logging.getLogger("kafka").setLevel(logging.DEBUG if settings.log_level == "DEBUG" else logging.CRITICAL)
    return settings


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
