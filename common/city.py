"""The city the rides happen in: Manhattan, its service area and its named zones.

rides.py places pickups and drop-offs in these zones; transaction.py refuses requests outside the
service area and prices rides by distance. Pure data and pure functions: no Kafka, no I/O.

The service area is a bounding box around Manhattan; the zones are rectangles inside it, in the order
listed (the first zone that contains a point names it). Coordinates are WGS84 degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NAME = "New York City (Manhattan)"
CURRENCY = "USD"
# Typical average speed of a car in Manhattan traffic; turns a distance into minutes.
SPEED_KMH = 18.0
EARTH_RADIUS_KM = 6371.0088
OUTSIDE = "outside service area"  # the zone name of a point that is in no zone


@dataclass(frozen=True)
class Box:
    """A rectangle of latitude and longitude, edges included."""

    south: float
    west: float
    north: float
    east: float

    def contains(self, lat: float, lon: float) -> bool:
        return self.south <= lat <= self.north and self.west <= lon <= self.east

    @property
    def center(self) -> tuple[float, float]:
        return (self.south + self.north) / 2, (self.west + self.east) / 2


@dataclass(frozen=True)
class Zone:
    name: str
    box: Box


# South tip (Battery Park) to north tip (Inwood), Hudson River to East River.
SERVICE_AREA = Box(south=40.700, west=-74.020, north=40.878, east=-73.907)

# Neighbourhood bands from south to north. Manhattan leans north-east, so the boxes are approximate
# and, together, cover the whole service area: every point inside it has a zone.
ZONES: tuple[Zone, ...] = (
    Zone("Financial District", Box(40.700, -74.020, 40.712, -73.907)),
    Zone("Tribeca", Box(40.712, -74.020, 40.722, -74.000)),
    Zone("Lower East Side", Box(40.712, -74.000, 40.722, -73.907)),
    Zone("Greenwich Village", Box(40.722, -74.020, 40.737, -73.995)),
    Zone("East Village", Box(40.722, -73.995, 40.737, -73.907)),
    Zone("Chelsea", Box(40.737, -74.020, 40.752, -73.990)),
    Zone("Gramercy", Box(40.737, -73.990, 40.752, -73.907)),
    Zone("Midtown West", Box(40.752, -74.020, 40.768, -73.980)),
    Zone("Midtown East", Box(40.752, -73.980, 40.768, -73.907)),
    Zone("Upper West Side", Box(40.768, -74.020, 40.800, -73.965)),
    Zone("Upper East Side", Box(40.768, -73.965, 40.800, -73.907)),
    Zone("Harlem", Box(40.800, -74.020, 40.830, -73.907)),
    Zone("Washington Heights", Box(40.830, -74.020, 40.878, -73.907)),
)


def in_service_area(lat: float, lon: float) -> bool:
    return SERVICE_AREA.contains(lat, lon)


def zone_of(lat: float, lon: float) -> str:
    """The name of the zone a point is in, or OUTSIDE."""
    for zone in ZONES:
        if zone.box.contains(lat, lon):
            return zone.name
    return OUTSIDE


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance. Streets make real trips longer; good enough for an estimate."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def travel_minutes(km: float) -> float:
    """Driving time for a distance at the city's average speed."""
    return km / SPEED_KMH * 60
