"""common/view.py: what api.py knows of each ride from the topics, whatever order they arrive in, and the live
page's figures; common/stats.public: the statistics as GET /stats serves them."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from common import view as view_module
from common.schemas import Place, RideConfirmed, RideRejected, RideRequest, StatsSnapshot
from common.stats import Stats, Totals, public
from common.view import View

NOW = datetime(2026, 12, 2, 12, 30, 15, tzinfo=timezone.utc)
TIMES_SQUARE = Place(lat=40.758, lon=-73.9855, zone="Midtown West")
WALL_STREET = Place(lat=40.7069, lon=-74.0113, zone="Financial District")


def request(ride_id: uuid.UUID | None = None, **changes) -> RideRequest:
    fields = {"ride_id": ride_id or uuid.uuid4(), "customer_id": "cust-1", "customer_email": "a@example.com",
              "customer_name": "Ada", "pickup": TIMES_SQUARE, "dropoff": WALL_STREET, "passengers": 1,
              "requested_at": NOW}
    return RideRequest(**{**fields, **changes})


def confirmation(req: RideRequest) -> RideConfirmed:
    return RideConfirmed(**req.__dict__, driver_id="driver-007", distance_km=6.1, pickup_eta_minutes=3.4,
                         fare=Decimal("23.79"), currency="USD", confirmed_at=NOW + timedelta(seconds=1))


def rejection(req: RideRequest, reason: str = "pickup is outside the service area") -> RideRejected:
    return RideRejected(ride_id=req.ride_id, customer_id=req.customer_id, reason=reason,
                        rejected_at=NOW + timedelta(seconds=1), request=req)


def test_a_ride_goes_from_requested_to_confirmed_with_its_driver_eta_and_fare():
    v, req = View(), request()
    assert v.ride(str(req.ride_id)) is None
    assert v.requested(req)
    assert v.ride(str(req.ride_id))["status"] == "requested"
    v.confirmed(confirmation(req))
    ride = v.ride(str(req.ride_id))
    assert ride["status"] == "confirmed" and ride["driver_id"] == "driver-007" and ride["fare"] == "23.79"
    assert ride["requested_at"] == "2026-12-02T12:30:15Z" and ride["confirmed_at"] == "2026-12-02T12:30:16Z"
    assert ride["pickup"] == {"lat": 40.758, "lon": -73.9855, "zone": "Midtown West"}
    assert "reason" not in ride and "customer_id" not in ride  # a ride_id is all it takes to ask: not who rode
    assert v.counts == {"requested": 1, "confirmed": 1, "rejected": 0}


def test_an_outcome_read_before_its_request_is_kept_and_the_request_fills_in():
    # The view reads ride_details and the outcome topics side by side: the rejection may come first.
    v, req = View(), request()
    v.rejected(rejection(req))
    assert v.requested(req)
    ride = v.ride(str(req.ride_id))
    assert ride["status"] == "rejected" and ride["reason"].startswith("pickup is outside")
    assert ride["requested_at"] == "2026-12-02T12:30:15Z"
    # The feed shows no ride's full id (with it, GET /rides/{id} tells the ride's places to anyone).
    assert v.live(NOW)["rejections"] == [{"ride_id": str(req.ride_id)[:8], "reason": "pickup is outside the service "
                                          "area", "at": "2026-12-02T12:30:16Z"}]


def test_a_ride_is_decided_once_and_requested_once():
    v, req = View(), request()
    assert v.requested(req) and not v.requested(req)  # the record of a ride this instance accepted itself
    v.confirmed(confirmation(req))
    v.confirmed(confirmation(req))  # at-least-once's repeat
    v.rejected(rejection(req))
    assert v.ride(str(req.ride_id))["status"] == "confirmed"
    assert v.counts == {"requested": 1, "confirmed": 1, "rejected": 0}
    assert v.live(NOW)["rejections"] == []


def test_the_identity_of_a_request_ignores_its_time_and_zone_names_only():
    req = request()
    later = request(req.ride_id, requested_at=NOW + timedelta(minutes=5),
                    pickup=TIMES_SQUARE.model_copy(update={"zone": "x"}))
    assert view_module.identity(req) == view_module.identity(later)
    assert view_module.identity(req) != view_module.identity(request(req.ride_id, passengers=2))
    assert view_module.identity(req) != view_module.identity(request(req.ride_id, customer_email="b@example.com"))


def test_the_oldest_rides_are_forgotten_past_capacity():
    v = View(capacity=100)
    rides = [request() for _ in range(150)]
    for r in rides:
        v.requested(r)
    assert v.ride(str(rides[0].ride_id)) is None and v.ride(str(rides[-1].ride_id)) is not None
    assert len(v.rides) == 100


def test_live_shows_the_latest_pickups_first_to_about_100_m_and_at_most_so_many():
    v = View()
    rides = [request(requested_at=NOW + timedelta(seconds=n)) for n in range(view_module.PICKUPS_SHOWN + 20)]
    for r in rides:
        v.requested(r)
    pickups = v.live(NOW)["pickups"]
    assert len(pickups) == view_module.PICKUPS_SHOWN
    assert pickups[0] == {"lat": 40.758, "lon": -73.986, "zone": "Midtown West", "status": "requested",
                          "at": _iso(rides[-1].requested_at)}
    assert pickups[-1]["at"] == _iso(rides[20].requested_at)


def snapshot(group: str, saved_at: datetime, rides: int) -> StatsSnapshot:
    stats = Stats(all=Totals(rides=rides, eta_milli=3000 * rides, fare_cents=1500 * rides),
                  zones={"Midtown West": Totals(rides=rides, eta_milli=3000 * rides, fare_cents=1500 * rides)},
                  minutes={"2026-12-02 12:30": rides}, currencies={"USD": rides})
    return StatsSnapshot(group=group, saved_at=saved_at, stats=json.loads(stats.to_json()))


def test_stats_are_the_latest_snapshot_read_of_a_followed_group():
    v = View(stats_groups=["p.analysis", "p.analysis-2"])
    assert v.public_stats(NOW)["rides"] == 0 and v.public_stats(NOW)["updated_at"] is None
    assert v.stats_saved(snapshot("p.analysis", NOW, 10), NOW)
    stats = v.public_stats(NOW)
    assert stats["rides"] == 10 and stats["mean_fare"] == "15.00" and stats["mean_eta_min"] == 3.0
    assert stats["updated_at"] == "2026-12-02T12:30:15Z"
    # The topic's order decides, not saved_at: a forged snapshot from the year 9000 does not pin the figures.
    assert v.stats_saved(snapshot("p.analysis", datetime(9000, 1, 1, tzinfo=timezone.utc), 424242), NOW)
    assert v.stats_saved(snapshot("p.analysis", NOW, 11), NOW)
    assert v.public_stats(NOW)["rides"] == 11
    # A group not followed is ignored (any producer can write any key); the first followed group is the default.
    assert not v.stats_saved(snapshot("evil", NOW, 99), NOW)
    assert v.stats_saved(snapshot("p.analysis-2", NOW, 5), NOW)
    assert v.public_stats(NOW)["rides"] == 11 and v.public_stats(NOW, "p.analysis-2")["rides"] == 5
    # Figures that cannot be read or shown are refused, and the last good ones stay.
    for hostile in ({"all": "not totals"}, {"all": {"rides": 1, "eta_milli": 1, "fare_cents": 10**41}},
                    {"zones": {"x": {"rides": -3, "eta_milli": 0, "fare_cents": 0}}}):
        assert not v.stats_saved(StatsSnapshot(group="p.analysis", saved_at=NOW, stats=hostile), NOW)
    assert v.public_stats(NOW)["rides"] == 11


def test_public_stats_show_the_last_minutes_up_to_now_oldest_first_and_zones_busiest_first():
    stats = Stats(all=Totals(rides=3, eta_milli=9000, fare_cents=3000),
                  zones={"Inwood": Totals(1, 3000, 1000), "Midtown East": Totals(2, 6000, 2000)},
                  minutes={"2026-12-02 12:29": 1, "2026-12-02 12:30": 2, "2026-12-02 11:00": 5},
                  currencies={"USD": 3})
    body = public(stats, NOW, minutes=3)
    assert body["per_minute"] == [{"minute": "12:28", "rides": 0}, {"minute": "12:29", "rides": 1},
                                  {"minute": "12:30", "rides": 2}]
    assert [z["name"] for z in body["zones"]] == ["Midtown East", "Inwood"]
    assert body["zones"][0] == {"name": "Midtown East", "rides": 2, "mean_eta_min": 3.0, "mean_fare": "10.00"}
    assert (body["rides"], body["currency"], body["mean_fare"]) == (3, "USD", "10.00")
    two_currencies = Stats(all=Totals(2, 2000, 2000), currencies={"USD": 1, "EUR": 1})
    assert public(two_currencies, NOW)["mean_fare"] is None and public(two_currencies, NOW)["currency"] is None


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def test_live_lists_each_groups_lag():
    v = View()
    v.lags({"email": ("ride_confirmed", 3), "analysis": (None, None)})
    assert v.live(NOW)["lag"] == [{"group": "analysis", "topic": None, "lag": None},
                                  {"group": "email", "topic": "ride_confirmed", "lag": 3}]
