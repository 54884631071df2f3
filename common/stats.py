"""The statistics analysis.py keeps over confirmed rides: what its state file holds, as JSON.

Plain data with exact integer sums, so that the same rides give the same figures in any order.
analysis.py folds rides into it; anything that shows the statistics reads this format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from kafka.structs import TopicPartition
from pydantic import Field, TypeAdapter

from common import stores
from common.schemas import EPOCH

# Bounds a saved or published state must respect: far beyond any real figure, and small enough that every mean
# and share computes (a forged snapshot on ride_stats with a 40-digit sum once made api.py's /stats fail).
Count = Annotated[int, Field(ge=0, le=10**12)]
Sum = Annotated[int, Field(ge=0, le=10**18)]


@dataclass
class Totals:
    """Rides and their summed ETAs and fares, as integers so that sums are exact in any order."""

    rides: Count = 0
    eta_milli: Sum = 0   # pickup ETAs in thousandths of a minute
    fare_cents: Sum = 0

    def add(self, eta_milli: int, fare_cents: int) -> None:
        self.rides += 1
        self.eta_milli += eta_milli
        self.fare_cents += fare_cents

    @property
    def mean_eta(self) -> float | None:
        return self.eta_milli / 1000 / self.rides if self.rides else None

    @property
    def mean_fare(self) -> Decimal | None:
        return (Decimal(self.fare_cents) / 100 / self.rides).quantize(Decimal("0.01")) if self.rides else None


ONE_MINUTE = timedelta(minutes=1)


def minute_key(at: datetime) -> str:
    """The UTC minute of an aware time as Stats.minutes keys it, "YYYY-MM-DD HH:MM". Each minute is formatted
    once (astimezone + strftime cost 2 us a ride, the rest of folding it 1.5). Integer arithmetic: a float
    timestamp would round 9999-12-31T23:59:59.999999Z up into a year 10000."""
    return _minute_text((at - EPOCH) // ONE_MINUTE)


@lru_cache(maxsize=4096)  # more than a day of minutes (analysis.py keeps one)
def _minute_text(minutes_since_epoch: int) -> str:
    return (EPOCH + minutes_since_epoch * ONE_MINUTE).strftime("%Y-%m-%d %H:%M")


@dataclass
class Stats:
    """Running statistics over confirmed rides; fold() adds one, in any order, with the same result."""

    all: Totals = field(default_factory=Totals)
    zones: dict[str, Totals] = field(default_factory=dict)    # by pickup zone
    minutes: dict[str, Count] = field(default_factory=dict)   # "YYYY-MM-DD HH:MM" (UTC, confirmed_at) -> rides
    currencies: dict[str, Count] = field(default_factory=dict)  # a mean fare means something in one currency
    dead_lettered: Count = 0

    def to_json(self) -> str:
        # Saved with every batch: default=vars writes each Totals as its fields where asdict() would first
        # deep-copy every dict (a day of minutes: 2.6 ms a save, 5 us a ride of a 500-ride batch; now 0.4 ms).
        return json.dumps(vars(self), default=vars, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Stats:
        return TypeAdapter(cls).validate_json(text)

    @classmethod
    def from_json_object(cls, obj: dict) -> Stats:
        """From to_json()'s object already parsed (ride_stats' snapshots carry it inside their own JSON)."""
        return TypeAdapter(cls).validate_python(obj)


def load_state(path: Path) -> tuple[Stats, dict[TopicPartition, int]]:
    """The statistics and offsets analysis.py saved in a state file, read-only (while it runs, too)."""
    text, offsets = stores.load_state(path)
    return (Stats.from_json(text) if text else Stats()), offsets


def public(stats: Stats, now: datetime, minutes: int = 15, zones: int = 20) -> dict:
    """The statistics as api.py serves them (GET /stats, the live page): totals, the busiest pickup zones and
    rides per minute over the `minutes` one-minute windows up to `now` (oldest first; an idle minute is 0)."""
    currency = next(iter(stats.currencies)) if len(stats.currencies) == 1 else None

    def money(amount: Decimal | None) -> str | None:
        # A mean fare means something in one currency only; exact, as a string (JSON numbers are floats).
        return None if amount is None or len(stats.currencies) > 1 else str(amount)

    def eta(t: Totals) -> float | None:
        return None if t.mean_eta is None else round(t.mean_eta, 2)

    busiest = sorted(stats.zones.items(), key=lambda zt: (-zt[1].rides, zt[0]))[:zones]
    windows = [minute_key(now - i * ONE_MINUTE) for i in reversed(range(minutes))]
    return {
        "rides": stats.all.rides, "mean_eta_min": eta(stats.all), "mean_fare": money(stats.all.mean_fare),
        "currency": currency, "dead_lettered": stats.dead_lettered,
        "zones": [{"name": name, "rides": t.rides, "mean_eta_min": eta(t), "mean_fare": money(t.mean_fare)}
                  for name, t in busiest],
        "per_minute": [{"minute": w[-5:], "rides": stats.minutes.get(w, 0)} for w in windows],
    }
