"""What api.py knows of the rides: each ride's status as the pipeline's topics tell it, and the live page's figures.

Pure: api.py's follower (common.follow) folds the records of ride_details, ride_confirmed, ride_rejected and
ride_stats into a View; the HTTP handlers read it. Each API instance keeps its own View from the same topics,
so any number of them answer the same. Bounded: past `capacity` rides the oldest are forgotten (GET
/rides/{id} then answers 404 for them, as for a ride requested before the view's window).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

from common import stats as stats_module
from common.schemas import Place, RideConfirmed, RideRejected, RideRequest, StatsSnapshot

REQUESTED, CONFIRMED, REJECTED = "requested", "confirmed", "rejected"
PICKUPS_SHOWN = 200    # the latest pickups on the live map
REJECTIONS_SHOWN = 10  # the latest rejections, with their reasons
# The records of rides accepted here that the follower has not read back yet, at most (the oldest forgotten first:
# the follower then decodes those as any other record).
OWN_RECORDS = 20_000


def identity(request: RideRequest) -> tuple:
    """What makes two requests under one ride_id the same request: everything but when it was sent (a retry is
    stamped anew) and the zone names (the service names zones from the coordinates). transaction.py's own
    fingerprint compares the same fields."""
    return (request.customer_id, request.customer_email, request.customer_name, request.pickup.lat,
            request.pickup.lon, request.dropoff.lat, request.dropoff.lon, request.passengers)


def _place(place: Place) -> tuple[float, float, str]:
    """A place as the view keeps it: a tuple of atoms, which the garbage collector stops tracking (a dict it would
    traverse at every full collection, three per ride with the Ride itself: 100,000 rides are 300,000 objects)."""
    return place.lat, place.lon, place.zone


def _place_json(place: tuple[float, float, str] | None) -> dict[str, Any] | None:
    return None if place is None else {"lat": place[0], "lon": place[1], "zone": place[2]}


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Ride:
    """One ride as far as the topics have told (an outcome may arrive before its request: topics are read
    side by side)."""

    ride_id: str
    status: str = REQUESTED
    identity: tuple | None = None
    customer_id: str | None = None
    requested_at: datetime | None = None
    pickup: tuple[float, float, str] | None = None  # (lat, lon, zone)
    dropoff: tuple[float, float, str] | None = None
    decided_at: datetime | None = None
    outcome: dict[str, Any] | None = None  # the confirmation's driver, ETA and fare, or the rejection's reason

    def to_json(self) -> dict[str, Any]:
        """GET /rides/{ride_id}'s body."""
        # Not the customer: a ride_id is all it takes to ask (the ride's places are what its rider needs to see).
        body: dict[str, Any] = {"ride_id": self.ride_id, "status": self.status,
                                "requested_at": _iso(self.requested_at), "pickup": _place_json(self.pickup),
                                "dropoff": _place_json(self.dropoff)}
        if self.status != REQUESTED:
            body[f"{self.status}_at"] = _iso(self.decided_at)
            body.update(self.outcome or {})
        return {k: v for k, v in body.items() if v is not None}


class View:
    """The rides of the window read so far, the latest statistics of each analysis group and each consumer
    group's lag. Every method takes the lock: the follower's thread writes while the handlers read."""

    def __init__(self, capacity: int = 100_000, stats_groups: list[str] | None = None) -> None:
        self.capacity = capacity
        # The analysis groups whose statistics are kept, in order of preference for GET /stats (None: any group,
        # the latest first): any producer can write to ride_stats, under any key.
        self.stats_groups = stats_groups
        self.lock = threading.Lock()
        self.rides: OrderedDict[str, Ride] = OrderedDict()  # first seen first
        self.counts = {REQUESTED: 0, CONFIRMED: 0, REJECTED: 0}
        self.rejections: deque[dict[str, Any]] = deque(maxlen=REJECTIONS_SHOWN)
        # analysis group -> (saved_at, stats), the latest read last
        self.stats: dict[str, tuple[datetime, stats_module.Stats]] = {}
        # consumer group -> (the topic it reads, records behind); None: nothing committed yet
        self.lag: dict[str, tuple[str | None, int | None]] = {}
        # key -> value of the ride_details records of rides accepted by this instance, until the follower reads
        # them back (read_back): the follower need not decode a record it knows to be one of those.
        self.own: dict[bytes, bytes] = {}

    # ------------------------------------------------------------------------------ from the topics

    def _ride(self, ride_id: str) -> Ride:
        ride = self.rides.get(ride_id)
        if ride is None:
            ride = self.rides[ride_id] = Ride(ride_id)
            if len(self.rides) > self.capacity:
                self.rides.popitem(last=False)
        return ride

    def requested(self, request: RideRequest, record: tuple[bytes, bytes] | None = None) -> bool:
        """A request read from ride_details (or just accepted by this instance: `record` is then the (key, value)
        it published, see read_back). False if the ride was known already (a retry, or the record of a ride this
        instance accepted itself)."""
        with self.lock:
            if record is not None:
                self.own[record[0]] = record[1]
                if len(self.own) > OWN_RECORDS:
                    del self.own[next(iter(self.own))]
            ride = self._ride(str(request.ride_id))
            if ride.identity is not None:
                return False
            ride.identity, ride.customer_id = identity(request), request.customer_id
            ride.requested_at = request.requested_at
            ride.pickup, ride.dropoff = _place(request.pickup), _place(request.dropoff)
            self.counts[REQUESTED] += 1
            return True

    def read_back(self, key: bytes | None, value: bytes | None) -> bool:
        """Whether a ride_details record is, byte for byte, one this instance published for a ride the view still
        knows: requested() would change nothing for it (the follower skips decoding it). Forgets the record."""
        with self.lock:
            if key is None:
                return False
            mine = self.own.pop(key, None)
            if mine is None or mine != value:
                return False
            ride = self.rides.get(key.decode(errors="replace"))
            return ride is not None and ride.identity is not None

    def confirmed(self, ride: RideConfirmed) -> None:
        outcome = {"driver_id": ride.driver_id, "pickup_eta_minutes": ride.pickup_eta_minutes,
                   "fare": str(ride.fare), "currency": ride.currency, "distance_km": ride.distance_km}
        with self.lock:
            self._decided(str(ride.ride_id), CONFIRMED, ride.confirmed_at, outcome)
            known = self.rides[str(ride.ride_id)]
            # The confirmation's places carry the service's own zones for the coordinates.
            known.pickup, known.dropoff = _place(ride.pickup), _place(ride.dropoff)

    def rejected(self, ride: RideRejected) -> None:
        with self.lock:
            if self._decided(str(ride.ride_id), REJECTED, ride.rejected_at, {"reason": ride.reason}):
                self.rejections.appendleft({"ride_id": str(ride.ride_id)[:8], "reason": ride.reason,
                                            "at": _iso(ride.rejected_at)})
            known = self.rides[str(ride.ride_id)]
            if known.pickup is None:
                known.pickup, known.dropoff = _place(ride.request.pickup), _place(ride.request.dropoff)

    def _decided(self, ride_id: str, status: str, at: datetime, outcome: dict[str, Any]) -> bool:
        ride = self._ride(ride_id)
        if ride.status != REQUESTED:
            return False  # decided once: a second outcome (at-least-once's repeat) changes nothing
        ride.status, ride.decided_at, ride.outcome = status, at, outcome
        self.counts[status] += 1
        return True

    def stats_saved(self, snapshot: StatsSnapshot, now: datetime) -> bool:
        """analysis.py's statistics of one group as of a saved batch, read in the topic's order (the latest wins,
        whatever its saved_at says); False if they cannot be read or shown, or are of a group not followed."""
        if self.stats_groups is not None and snapshot.group not in self.stats_groups:
            return False
        try:
            parsed = stats_module.Stats.from_json_object(snapshot.stats)
            stats_module.public(parsed, now)  # what GET /stats will do with them: refused here, not failing there
        except Exception:  # anything a producer could write: bounds, types, figures that do not compute
            return False
        with self.lock:
            self.stats.pop(snapshot.group, None)
            self.stats[snapshot.group] = (snapshot.saved_at, parsed)
        return True

    def lags(self, lags: dict[str, tuple[str | None, int | None]]) -> None:
        with self.lock:
            self.lag = dict(lags)

    # ------------------------------------------------------------------------------ for the handlers

    def ride(self, ride_id: str) -> dict[str, Any] | None:
        with self.lock:
            ride = self.rides.get(ride_id)
            return None if ride is None or ride.identity is None and ride.status == REQUESTED else ride.to_json()

    def identity_of(self, ride_id: str) -> tuple | None:
        """The identity of the request known under this ride_id, or None if none is known."""
        with self.lock:
            ride = self.rides.get(ride_id)
            return None if ride is None else ride.identity

    def public_stats(self, now: datetime, group: str | None = None) -> dict[str, Any]:
        """GET /stats: the statistics of `group` (default: the first of stats_groups that has some, else the latest
        read of any group)."""
        with self.lock:
            if group is not None:
                chosen = self.stats.get(group)
            elif self.stats_groups is not None:
                chosen = next((self.stats[g] for g in self.stats_groups if g in self.stats), None)
            else:
                chosen = next(reversed(self.stats.values()), None)
            saved_at, stats = chosen if chosen else (None, stats_module.Stats())
            body = stats_module.public(stats, now)
        body["updated_at"] = _iso(saved_at)
        return body

    def live(self, now: datetime) -> dict[str, Any]:
        """What the live page shows, once a second (GET /events). Anyone who can open the page sees it: pickups to
        about 100 m and no ride's full id (with one, GET /rides/{id} tells its places)."""
        with self.lock:
            pickups = [{"lat": round(r.pickup[0], 3), "lon": round(r.pickup[1], 3),
                        "zone": r.pickup[2], "status": r.status, "at": _iso(r.decided_at or r.requested_at)}
                       for r in islice(reversed(self.rides.values()), PICKUPS_SHOWN) if r.pickup is not None]
            counts, rejections, lag = dict(self.counts), list(self.rejections), dict(self.lag)
        return {"at": _iso(now), "counts": counts, "pickups": pickups, "rejections": rejections,
                "stats": self.public_stats(now),
                "lag": [{"group": group, "topic": topic, "lag": behind}
                        for group, (topic, behind) in sorted(lag.items())]}
