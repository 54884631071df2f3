"""analysis.py: live statistics over confirmed rides (counts, pickup ETAs, fares, busiest zones, rides per minute).

Consumes ride_confirmed in group "analysis"; prints a compact table to stdout every few seconds and at exit.

Guarantee: exact totals across crashes, restarts and replays. The statistics and the offsets of the rides
they include are saved together, once per batch, in one SQLite file (--state), and each partition resumes
from there, not from Kafka's committed offset (common/apply.py: Folded). One instance per state file (a
lock enforces it); a state file belongs to one topic and one consumer group, any other is refused.
Rides per minute follow the wall clock: the table shows the minutes up to now, and the saved state keeps
the last day of them (a ride's confirmed_at, set by whoever produced it, can never move that window).
The saved statistics are also published to ride_stats (compacted, keyed by the group), at most once a second
and once at exit, so that api.py can serve them from anywhere.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from pydantic import Field

from common import apply, cli, schemas, topics
from common.settings import ConsumerSettings, GroupId
from common.stats import Stats, Totals, minute_key


def minute_of(ride: schemas.RideConfirmed) -> str:
    return minute_key(ride.confirmed_at)


def fold(stats: Stats, ride: schemas.RideConfirmed) -> Stats:
    """Add one confirmed ride to the statistics (in place, for speed) and return them. Whatever can fail
    is computed before anything changes: a ride is counted whole or not at all."""
    # The schema allows two decimal places for fares: cents are exact.
    eta_milli, fare_cents, minute = round(ride.pickup_eta_minutes * 1000), int(ride.fare * 100), minute_of(ride)
    stats.all.add(eta_milli, fare_cents)
    zone = stats.zones.get(ride.pickup.zone)
    if zone is None:
        zone = stats.zones[ride.pickup.zone] = Totals()
    zone.add(eta_milli, fare_cents)
    stats.minutes[minute] = stats.minutes.get(minute, 0) + 1
    stats.currencies[ride.currency] = stats.currencies.get(ride.currency, 0) + 1
    return stats


PUBLISH_EVERY = 1.0  # seconds between two snapshots on ride_stats, at most

# Rides per minute are kept for the last day only (the most --minutes can show): a state file that ran
# for weeks would otherwise carry, and rewrite on every save, one bucket per minute since it started.
RETAINED_MINUTES = 1440
# Buckets up to this many minutes ahead of this machine's clock are kept too: transaction.py stamps
# confirmed_at with its own host's clock, which may run a little ahead of ours.
CLOCK_SKEW_MINUTES = 5


def prune(stats: Stats, now: datetime, keep: int = RETAINED_MINUTES) -> Stats:
    """Keep only the per-minute buckets of the `keep` minutes up to `now` (plus CLOCK_SKEW_MINUTES ahead),
    in place; called once per batch, before saving. The window follows the clock, never the data: one
    confirmation stamped 9999-12-31 must not push every real minute out of it. Totals are never pruned."""
    oldest = minute_key(now - timedelta(minutes=keep - 1))
    newest = minute_key(now + timedelta(minutes=CLOCK_SKEW_MINUTES))
    stats.minutes = {m: n for m, n in stats.minutes.items() if oldest <= m <= newest}
    return stats


def _printable(text: str, width: int) -> str:
    """A zone name as one table cell: zone names are free text, and a newline would break the table."""
    return "".join(c if c.isprintable() else "?" for c in text[:width])


def _fare(amount: Decimal | None, currency: str) -> str:
    return "-" if amount is None else f"{amount:.2f}{currency}"


def render(stats: Stats, now: datetime, minutes: int = 5, zones: int = 8) -> str:
    """The table: totals, the busiest pickup zones, and rides per minute over the last `minutes` windows
    ending at `now` (the wall clock, so that an idle pipeline shows zeros and no record moves the window)."""
    currency = f" {next(iter(stats.currencies))}" if len(stats.currencies) == 1 else ""
    eta = "-" if stats.all.mean_eta is None else f"{stats.all.mean_eta:.1f} min"
    fare = _fare(stats.all.mean_fare, currency) if len(stats.currencies) <= 1 else "(several currencies)"
    lines = [f"confirmed rides: {stats.all.rides}   mean pickup ETA: {eta}   mean fare: {fare}"
             + (f"   dead-lettered: {stats.dead_lettered}" if stats.dead_lettered else "")]
    if stats.zones:
        lines.append(f"  {'pickup zone':<20} {'rides':>6} {'share':>6} {'ETA min':>8} {'fare':>9}")
        busiest = sorted(stats.zones.items(), key=lambda zt: (-zt[1].rides, zt[0]))
        for zone, t in busiest[:zones]:
            lines.append(f"  {_printable(zone, 20):<20} {t.rides:>6} {t.rides / stats.all.rides:>6.1%} "
                         f"{t.mean_eta:>8.1f} {_fare(t.mean_fare, ''):>9}")
        if len(busiest) > zones:
            lines.append(f"  ... and {len(busiest) - zones} more zones")
    if stats.all.rides:
        windows = [minute_key(now - timedelta(minutes=i)) for i in reversed(range(minutes))]
        lines.append("  rides per minute (UTC): " + "  ".join(f"{w[-5:]} {stats.minutes.get(w, 0)}" for w in windows))
    return "\n".join(lines)


def summary(stats: Stats) -> str:
    eta = "-" if stats.all.mean_eta is None else f"{stats.all.mean_eta:.2f}"
    fare = "-" if stats.all.mean_fare is None else f"{stats.all.mean_fare:.2f}"
    return (f"total={stats.all.rides} zones={len(stats.zones)} mean_eta_min={eta} mean_fare={fare} "
            f"dead_lettered={stats.dead_lettered}")


# ------------------------------------------------------------------------------------------ the script


class Analysis(apply.Folded):
    """The loop's store: the statistics, saved with the offsets of the rides they include."""

    script, doing = "analysis.py", "analysing confirmed rides"

    def __init__(self, settings: AnalysisSettings) -> None:
        super().__init__(settings.state, Stats, fold, "cannot be counted")
        self.minutes = settings.minutes
        self.shown: tuple[int, int] | None = None  # (rides, dead letters) in the table last printed
        self.group_id = settings.group_id
        self.saves, self.published, self.published_at = 0, 0, 0.0  # batches saved; how many at the last publish

    def bind(self, topic: str, topic_id: str, group_id: str) -> None:
        super().bind(topic, topic_id, group_id)
        self.group_id = group_id

    def snapshot(self, final: bool) -> tuple[str, bytes, bytes] | None:
        # The statistics as saved, on ride_stats for api.py, at most once a second (a batch is saved every few
        # ms under load) and once at the end; only when they changed.
        now = time.monotonic()
        if self.published == self.saves or not final and now - self.published_at < PUBLISH_EVERY:
            return None
        self.published, self.published_at = self.saves, now
        value = (f'{{"schema_version":{schemas.SCHEMA_VERSION},"group":{json.dumps(self.group_id)},'
                 f'"saved_at":"{datetime.now(timezone.utc).isoformat()}","stats":{self.saved_json}}}')
        return topics.RIDE_STATS, self.group_id.encode(), value.encode()

    def set_aside(self, record, ride, reason: str) -> None:
        self.state.dead_lettered += 1

    def save(self, offsets) -> None:
        prune(self.state, now=datetime.now(timezone.utc))
        super().save(offsets)
        self.saves += 1

    def tick(self) -> None:  # the table, when something changed: an idle pipeline does not repeat it
        if (self.state.all.rides, self.state.dead_lettered) != self.shown:
            self.shown = (self.state.all.rides, self.state.dead_lettered)
            print(render(self.state, datetime.now(timezone.utc), self.minutes), flush=True)

    def report(self) -> None:  # once closed, the state is what the file holds
        print(render(self.state, datetime.now(timezone.utc), self.minutes), flush=True)


class AnalysisSettings(ConsumerSettings):
    group_id: GroupId = "analysis"
    state: Path = Field(Path("analysis.db"), json_schema_extra={"metavar": "PATH"},
                        description="SQLite file of the statistics and their offsets")
    every: float = Field(5.0, gt=0, json_schema_extra={"metavar": "SECONDS"},  # printed only when something changed
                         description="print the table this often")
    minutes: int = Field(5, ge=1, le=1440, json_schema_extra={"metavar": "N"},
                         description="one-minute windows in the table")


def main(argv: list[str] | None = None) -> int:
    settings = cli.load(AnalysisSettings, argv, __doc__)
    return apply.run(settings, topics.RIDE_CONFIRMED, schemas.RideConfirmed, lambda _: Analysis(settings),
                     summary=lambda _tally, store: summary(store.state), every=settings.every,
                     stage="analysed", outcomes={"analysed": "analysed", "dead_lettered": "dead_lettered"})


if __name__ == "__main__":
    cli.run(main)
