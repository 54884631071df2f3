"""common/city.py: Manhattan's zones and service area, the fast zone lookup, the demand, distances and times."""

import itertools
import json
import math
import random
from collections import Counter, defaultdict

import pytest

from common import city

LANDMARKS = [
    (40.7069, -74.0113, "Financial District"),  # Wall Street
    (40.7033, -74.0170, "Financial District"),  # The Battery
    (40.7163, -74.0086, "Tribeca"),
    (40.7245, -73.9975, "SoHo"),  # Prince Street and Broadway
    (40.7156, -73.9999, "Chinatown"),  # Columbus Park
    (40.7188, -73.9900, "Lower East Side"),  # the Tenement Museum
    (40.7308, -73.9973, "Greenwich Village"),  # Washington Square Park
    (40.7338, -74.0021, "West Village"),  # the Stonewall Inn
    (40.7265, -73.9815, "East Village"),  # Tompkins Square Park
    (40.7424, -74.0060, "Chelsea"),  # Chelsea Market
    (40.7638, -73.9918, "Hell's Kitchen"),  # 10th Avenue and 50th Street
    (40.7484, -73.9857, "Midtown South"),  # the Empire State Building
    (40.7359, -73.9911, "Midtown South"),  # Union Square
    (40.7580, -73.9855, "Midtown"),  # Times Square
    (40.7587, -73.9787, "Midtown"),  # Rockefeller Center
    (40.7527, -73.9772, "Midtown East"),  # Grand Central
    (40.7489, -73.9680, "Midtown East"),  # the United Nations
    (40.7466, -73.9780, "Murray Hill"),  # Lexington Avenue and 35th Street
    (40.7382, -73.9862, "Gramercy"),  # Gramercy Park
    (40.7316, -73.9780, "Gramercy"),  # Stuyvesant Town
    (40.7725, -73.9835, "Upper West Side"),  # Lincoln Center
    (40.7813, -73.9740, "Upper West Side"),  # the Museum of Natural History
    (40.7812, -73.9665, "Central Park"),  # the Great Lawn
    (40.7794, -73.9632, "Central Park"),  # the Met: it stands inside the park's boundary, east of its drive
    (40.7712, -73.9674, "Upper East Side"),  # the Frick Collection, across Fifth Avenue from the park
    (40.7770, -73.9510, "Upper East Side"),  # Yorkville: Second Avenue and 86th Street
    (40.8075, -73.9626, "Morningside Heights"),  # Columbia University
    (40.8100, -73.9501, "Harlem"),  # the Apollo Theater
    (40.8200, -73.9493, "West Harlem"),  # City College
    (40.7985, -73.9415, "East Harlem"),  # Lexington Avenue and 116th Street
    (40.8506, -73.9335, "Washington Heights"),
    (40.8649, -73.9317, "Washington Heights"),  # the Cloisters
    (40.8722, -73.9259, "Inwood"),  # Inwood Hill Park
    (40.8656, -73.9262, "Inwood"),  # Dyckman Street
]

OUTSIDE = [
    (40.7178, -74.0431),  # Jersey City
    (40.7440, -74.0324),  # Hoboken
    (40.6944, -73.9213),  # Bushwick, Brooklyn
    (40.6928, -73.9903),  # Downtown Brooklyn
    (40.7447, -73.9485),  # Long Island City, Queens
    (40.7600, -74.0050),  # the Hudson, mid-channel
    (40.7480, -73.9650),  # the East River, mid-channel
    (40.8448, -73.8648),  # the Bronx
    (40.8762, -73.9104),  # Marble Hill: Manhattan's, but on the mainland, in a Bronx NTA
    (40.7620, -73.9497),  # Roosevelt Island (dropped)
    (40.6895, -74.0168),  # Governors Island (dropped)
    (40.7932, -73.9213),  # Randall's Island (dropped)
    (40.6413, -73.7781),  # JFK
    (51.5074, -0.1278),
    (0.0, 0.0),
    (math.nan, -73.98),
    (40.75, math.inf),
]


@pytest.mark.parametrize(("lat", "lon", "zone"), LANDMARKS)
def test_landmarks_are_in_their_zones(lat, lon, zone):
    assert city.in_service_area(lat, lon)
    assert city.zone_of(lat, lon) == zone == city.zone_by_polygons(lat, lon)


@pytest.mark.parametrize(("lat", "lon"), OUTSIDE)
def test_places_beyond_manhattan_are_outside(lat, lon):
    assert not city.in_service_area(lat, lon)
    assert city.zone_of(lat, lon) == city.OUTSIDE == city.zone_by_polygons(lat, lon)


def test_the_bounding_box_is_no_longer_the_service_area():
    # Most of Manhattan's box is water, New Jersey, Brooklyn, Queens and the Bronx.
    box = city.SERVICE_AREA
    assert not city.in_service_area(box.south, box.west) and not city.in_service_area(box.north, box.east)
    rng = random.Random(1)
    inside = sum(city.in_service_area(rng.uniform(box.south, box.north), rng.uniform(box.west, box.east))
                 for _ in range(10_000))
    assert 0.15 < inside / 10_000 < 0.35


def test_the_grid_agrees_with_the_plain_polygon_test():
    rng = random.Random(2)
    box = city.SERVICE_AREA
    for _ in range(50_000):
        lat, lon = rng.uniform(box.south - 0.01, box.north + 0.01), rng.uniform(box.west - 0.01, box.east + 0.01)
        assert city.zone_of(lat, lon) == city.zone_by_polygons(lat, lon), (lat, lon)


def test_the_grid_agrees_on_the_data_s_own_lattice_where_points_lie_on_edges_and_cell_borders():
    # The vertices have 5 decimals and the cells are 0.002 degrees: points of the 0.00001 lattice fall exactly on
    # edges, vertices and cell borders, where rounding is most likely to go wrong.
    rng = random.Random(3)
    box = city.SERVICE_AREA
    points = [(round(rng.uniform(box.south, box.north), 5), round(rng.uniform(box.west, box.east), 5))
              for _ in range(30_000)]
    points += [vertex for z in city.ZONES for vertex in z.ring]
    for lat, lon in points:
        assert city.zone_of(lat, lon) == city.zone_by_polygons(lat, lon), (lat, lon)
        assert sum(z.contains(lat, lon) for z in city.ZONES) <= 1, (lat, lon)


def test_zones_do_not_overlap():
    rng = random.Random(4)
    for z in city.ZONES:  # points of each zone's box, where overlaps with its neighbours would be
        for _ in range(2000):
            lat, lon = rng.uniform(z.box.south, z.box.north), rng.uniform(z.box.west, z.box.east)
            assert sum(other.contains(lat, lon) for other in city.ZONES) <= 1, (z.name, lat, lon)


def test_zones_tile_one_island_without_gaps():
    # Neighbours share their edges exactly (the same two vertices), and the edges no other zone shares chain into
    # one closed ring: the outline. A gap or a hole between zones would be a second ring.
    edges = Counter(frozenset(pair) for z in city.ZONES for pair in itertools.pairwise(z.ring))
    assert set(edges.values()) <= {1, 2}
    outline: dict[tuple[float, float], list[tuple[float, float]]] = defaultdict(list)
    for edge, count in edges.items():
        if count == 1:
            a, b = tuple(edge)
            outline[a].append(b)
            outline[b].append(a)
    assert all(len(ends) == 2 for ends in outline.values())
    start = next(iter(outline))
    seen, todo = set(), [start]
    while todo:
        vertex = todo.pop()
        if vertex not in seen:
            seen.add(vertex)
            todo.extend(outline[vertex])
    assert seen == set(outline)


def shoelace_km2(ring):
    km_per_degree = 111.32
    twice = sum(lon1 * lat2 - lon2 * lat1 for (lat1, lon1), (lat2, lon2) in itertools.pairwise(ring))
    return abs(twice) / 2 * km_per_degree**2 * math.cos(math.radians(40.78))


def test_the_service_area_is_manhattan_island_s_size():
    # Manhattan's land is about 59 km2 with its islands (Roosevelt, Randall's, Governors...), which are left out.
    assert 52 < sum(shoelace_km2(z.ring) for z in city.ZONES) < 58


def test_every_zone_s_label_is_in_that_zone():
    for z in city.ZONES:
        assert city.zone_of(*z.label) == z.name


def test_the_geojson_file_is_valid():
    data = json.loads(city.DATA.read_text(encoding="utf-8"))
    assert data["type"] == "FeatureCollection"
    assert "Neighborhood Tabulation Areas" in data["source"] and "tools/city_data.py" in data["source"]
    assert city.SOURCE == data["source"]
    assert city.DATA.stat().st_size < 60_000
    names = [f["properties"]["name"] for f in data["features"]]
    assert len(set(names)) == len(names) == len(city.ZONES)
    assert 15 <= len(names) <= 25
    for feature in data["features"]:
        assert feature["type"] == "Feature"
        assert set(feature["properties"]) == {"name", "demand", "label"}
        assert feature["geometry"]["type"] == "Polygon"
        [ring] = feature["geometry"]["coordinates"]
        assert ring[0] == ring[-1] and 4 <= len(ring) <= 60
        for lon, lat in [*ring, feature["properties"]["label"]]:
            assert -74.1 < lon < -73.9 and 40.6 < lat < 40.9  # [lon, lat], in New York
            assert round(lon, 5) == lon and round(lat, 5) == lat
        assert len(set(map(tuple, ring))) == len(ring) - 1  # no vertex twice


def test_a_zone_must_be_a_polygon_without_holes():
    square = [[-74, 40.7], [-73.99, 40.7], [-73.99, 40.71], [-74, 40.7]]
    feature = {"properties": {"name": "x", "demand": 1, "label": [-73.995, 40.705]},
               "geometry": {"type": "Polygon", "coordinates": [square, square]}}
    with pytest.raises(ValueError, match="without holes"):
        city.zone(feature)
    assert city.zone({**feature, "geometry": {"type": "Polygon", "coordinates": [square]}}).contains(40.702, -73.998)


# ------------------------------------------------------------------------------------------ demand


def test_demand_adds_up_to_one_and_midtown_is_busiest():
    demand = {z.name: z.demand for z in city.ZONES}
    assert sum(demand.values()) == pytest.approx(1, abs=1e-9)
    assert all(d > 0 for d in demand.values())
    assert max(demand, key=demand.__getitem__) == "Midtown"
    assert min(demand, key=demand.__getitem__) == "Inwood"


def test_random_points_follow_the_demand():
    rng = random.Random(5)
    zones = Counter(city.random_point(rng)[2] for _ in range(20_000))
    midtown = sum(n for name, n in zones.items() if name.startswith("Midtown"))
    assert midtown > 10 * zones["Inwood"]
    assert midtown / 20_000 == pytest.approx(0.31, abs=0.02)  # Midtown, Midtown East and Midtown South: 31 %
    for z in city.ZONES:
        assert zones[z.name] / 20_000 == pytest.approx(z.demand, abs=0.01), z.name


def test_random_points_are_in_the_zone_they_are_named_by():
    rng = random.Random(6)
    for _ in range(20_000):
        lat, lon, zone = city.random_point(rng)
        assert city.in_service_area(lat, lon)
        assert city.zone_of(lat, lon) == zone == city.zone_by_polygons(lat, lon)
        assert round(lat, 6) == lat and round(lon, 6) == lon  # as they go on the wire


def test_random_points_are_spread_over_their_zone():
    # Uniform within the zone: each half of Central Park's box (split at its middle latitude) gets its share.
    park = next(z for z in city.ZONES if z.name == "Central Park")
    rng = random.Random(7)
    points = [city.random_point(rng) for _ in range(200_000)]
    in_park = [(lat, lon) for lat, lon, zone in points if zone == park.name]
    middle = park.box.center[0]
    south = sum(lat < middle for lat, _ in in_park) / len(in_park)
    assert south == pytest.approx(0.5, abs=0.1)


def test_same_rng_state_same_point():
    assert [city.random_point(random.Random(8)) for _ in range(3)] == [city.random_point(random.Random(8))] * 3


# ------------------------------------------------------------------------------------------ distances


def test_distance_between_known_places():
    times_square, wall_street = (40.7580, -73.9855), (40.7069, -74.0113)
    assert 5.5 < city.distance_km(*times_square, *wall_street) < 6.5
    assert city.distance_km(*times_square, *times_square) == 0
    assert city.distance_km(*times_square, *wall_street) == pytest.approx(city.distance_km(*wall_street, *times_square))
    # One degree of latitude is about 111 km anywhere.
    assert city.distance_km(40, -74, 41, -74) == pytest.approx(111.2, abs=0.2)


def test_travel_minutes_at_city_speed():
    assert city.travel_minutes(0) == 0
    assert city.travel_minutes(city.SPEED_KMH) == pytest.approx(60)
    assert city.travel_minutes(3) < city.travel_minutes(4)
