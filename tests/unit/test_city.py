"""common/city.py: the service area, its zones, distances and driving times."""

import random

import pytest

from common import city


@pytest.mark.parametrize(
    ("lat", "lon", "zone"),
    [
        (40.7069, -74.0113, "Financial District"),  # Wall Street
        (40.7163, -74.0086, "Tribeca"),
        (40.7308, -73.9973, "Greenwich Village"),  # Washington Square Park
        (40.7410, -74.0048, "Chelsea"),  # Chelsea Market
        (40.7580, -73.9855, "Midtown West"),  # Times Square
        (40.7527, -73.9772, "Midtown East"),  # Grand Central
        (40.7813, -73.9740, "Upper West Side"),  # Museum of Natural History
        (40.7794, -73.9632, "Upper East Side"),  # The Met
        (40.8100, -73.9501, "Harlem"),  # Apollo Theater
        (40.8506, -73.9335, "Washington Heights"),
    ],
)
def test_landmarks_are_in_their_zones(lat, lon, zone):
    assert city.in_service_area(lat, lon)
    assert city.zone_of(lat, lon) == zone


@pytest.mark.parametrize(("lat", "lon"), [(40.7178, -74.0431), (40.6413, -73.7781), (40.6928, -73.9903),
                                          (51.5074, -0.1278), (0.0, 0.0)])
def test_places_beyond_the_box_are_outside(lat, lon):
    assert not city.in_service_area(lat, lon)
    assert city.zone_of(lat, lon) == city.OUTSIDE


def test_every_point_of_the_service_area_has_a_zone_and_every_zone_is_inside_it():
    rng = random.Random(1)
    box = city.SERVICE_AREA
    for _ in range(20_000):
        lat, lon = rng.uniform(box.south, box.north), rng.uniform(box.west, box.east)
        assert city.zone_of(lat, lon) != city.OUTSIDE, (lat, lon)
    for zone in city.ZONES:
        assert city.in_service_area(*zone.box.center)
        assert city.zone_of(*zone.box.center) == zone.name
    assert len({z.name for z in city.ZONES}) == len(city.ZONES)


def test_edges_belong_to_the_service_area():
    box = city.SERVICE_AREA
    assert city.in_service_area(box.south, box.west) and city.in_service_area(box.north, box.east)
    assert not city.in_service_area(box.north + 1e-6, box.east)


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
