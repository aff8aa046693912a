"""CARLA <-> cityenv conversions, against hand-computed values (no server needed).

The tests at the end build a ``carla.Map`` offline from OpenDRIVE text and run only where the
``carla`` client is installed.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from carla_tools.carla_convert import (
    CARLA_FAR_M,
    DYNAMIC_TAGS,
    SKY_TAG,
    WaypointRecord,
    build_road_network,
    camera_blueprint_attributes,
    camera_from_blueprint_attributes,
    carla_location_to_enu,
    carla_rotation_matrix,
    carla_transform_to_pose,
    carla_yaw_to_heading,
    compass_to_carla_sun_azimuth,
    compose_render,
    decode_carla_depth,
    dynamic_mask,
    enu_to_carla_location,
    group_lanes,
    plan_time_change,
    pose_to_carla_transform,
    raw_to_bgra,
    scaled_count,
    semantic_tags,
    split_ticks,
    traffic_seed,
    weather_parameters,
)
from carla_tools.conditions import WEATHERS, local_noon_utc, local_solar_hour
from carla_tools.sim import RoadNetwork
from cityenv.errors import InvalidCameraError, ShapeMismatchError, UnknownNameError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose

FRAME = LocalFrame(37.5, 127.0, 0.0)
SCALE = 1000.0 / (256**3 - 1)


# --- axes -------------------------------------------------------------------------------------
def test_locations_flip_y_and_round_trip():
    np.testing.assert_array_equal(carla_location_to_enu([1.0, 2.0, 3.0]), [1.0, -2.0, 3.0])
    points = np.random.default_rng(0).normal(size=(5, 4, 3)) * 100
    np.testing.assert_allclose(enu_to_carla_location(carla_location_to_enu(points)), points)
    with pytest.raises(ShapeMismatchError, match=r"\(\.\.\., 3\)"):
        carla_location_to_enu([1.0, 2.0])


def test_carla_rotation_matrix_hand_values():
    np.testing.assert_allclose(carla_rotation_matrix(0, 0, 0), np.eye(3), atol=1e-12)
    # yaw 90: forward (first column) is CARLA +y, right is -x
    np.testing.assert_allclose(
        carla_rotation_matrix(0, 90, 0)[:, :2], [[0, -1], [1, 0], [0, 0]], atol=1e-12
    )
    # pitch 30: forward tilts up
    np.testing.assert_allclose(carla_rotation_matrix(30, 0, 0)[:, 0], [np.sqrt(3) / 2, 0, 0.5])


@pytest.mark.parametrize(
    ("yaw", "forward"),
    [(0.0, (1, 0, 0)), (90.0, (0, -1, 0)), (180.0, (-1, 0, 0)), (-90.0, (0, 1, 0))],
)
def test_camera_yaw_looks_along_the_compass(yaw, forward):
    # CARLA yaw 0 looks along +x = east; yaw 90 turns right, towards +y = south
    pose = carla_transform_to_pose([10.0, 20.0, 2.0], 0.0, yaw, 0.0)
    np.testing.assert_allclose(pose.forward, forward, atol=1e-12)
    np.testing.assert_allclose(pose.position, [10.0, -20.0, 2.0])
    np.testing.assert_allclose(pose.rotation_matrix[:, 1], [0, 0, -1], atol=1e-12)  # y is down
    assert pose.heading_deg == pytest.approx(carla_yaw_to_heading(yaw))


def test_positive_pitch_looks_up_and_positive_roll_dips_the_right_side():
    up = carla_transform_to_pose([0, 0, 0], 30.0, 0.0, 0.0)
    np.testing.assert_allclose(up.forward, [np.sqrt(3) / 2, 0, 0.5], atol=1e-12)
    assert up.pitch_deg == pytest.approx(30.0)
    rolled = carla_transform_to_pose([0, 0, 0], 0.0, 0.0, 30.0)
    right = rolled.rotation_matrix[:, 0]  # camera x in ENU; looking east, right is south
    np.testing.assert_allclose(right, [0, -np.sqrt(3) / 2, -0.5], atol=1e-12)


def test_carla_angles_agree_with_pose_from_heading():
    rng = np.random.default_rng(1)
    for pitch, yaw, roll in rng.uniform([-80, -180, -60], [80, 180, 60], size=(20, 3)):
        pose = carla_transform_to_pose([1, 2, 3], pitch, yaw, roll)
        expected = Pose.from_heading([1, -2, 3], carla_yaw_to_heading(yaw), pitch, roll)
        np.testing.assert_allclose(pose.matrix, expected.matrix, atol=1e-9)


def test_pose_to_carla_transform_hand_case_and_round_trip():
    south = pose_to_carla_transform(Pose.from_heading([5.0, 6.0, 1.5], 180.0, 10.0))
    np.testing.assert_allclose(south.location, [5.0, -6.0, 1.5])
    assert (south.pitch, south.yaw, south.roll) == pytest.approx((10.0, 90.0, 0.0), abs=1e-9)
    rng = np.random.default_rng(2)
    angles = rng.uniform([-89, -179, -179], [89, 179, 179], size=(30, 3))
    angles = np.vstack([angles, [[90, 40, 0], [-90, -70, 0]]])  # straight up / down
    for pitch, yaw, roll in angles:
        pose = carla_transform_to_pose([3, 4, 5], pitch, yaw, roll)
        back = pose_to_carla_transform(pose)
        np.testing.assert_allclose((back.pitch, back.yaw, back.roll), (pitch, yaw, roll), atol=1e-6)
        np.testing.assert_allclose(carla_transform_to_pose(*back).matrix, pose.matrix, atol=1e-9)
    np.testing.assert_allclose(pose_to_carla_transform(pose.matrix).location, [3, 4, 5])


# --- images -----------------------------------------------------------------------------------
def _pixel(b: int, g: int, r: int, a: int = 255) -> np.ndarray:
    return np.array([[[b, g, r, a]]], dtype=np.uint8)


@pytest.mark.parametrize(
    ("bgr", "metres"),
    [
        ((0, 0, 0), 0.0),
        ((0, 0, 1), SCALE),  # R is the least significant byte
        ((0, 1, 0), 256 * SCALE),
        ((1, 0, 0), 65536 * SCALE),
        ((0x02, 0x8F, 0x5C), 167772 * SCALE),  # 0x028F5C = 167772 -> 9.99999 m
        ((0x80, 0x00, 0x00), 8388608 * SCALE),  # 500.00003 m
    ],
)
def test_depth_decodes_bgra_bytes(bgr, metres):
    depth = decode_carla_depth(_pixel(*bgr))
    assert depth.dtype == np.float32 and depth.shape == (1, 1)
    assert depth[0, 0] == pytest.approx(metres, rel=1e-6, abs=1e-9)


def test_depth_far_plane_is_1000_m_and_means_no_depth():
    far = _pixel(255, 255, 255)
    assert decode_carla_depth(far, far_to_zero=False)[0, 0] == pytest.approx(CARLA_FAR_M)
    assert decode_carla_depth(far)[0, 0] == 0.0
    assert decode_carla_depth(_pixel(0x02, 0x8F, 0x5C, a=0))[0, 0] == pytest.approx(10.0, abs=1e-4)


def test_images_from_raw_bytes_and_semantic_mask():
    raw = bytes(range(24))  # 2 x 3 pixels
    bgra = raw_to_bgra(raw, width=3, height=2)
    assert bgra.shape == (2, 3, 4) and bgra[1, 2].tolist() == [20, 21, 22, 23]
    with pytest.raises(ShapeMismatchError, match=r"= 32 bytes \(BGRA\), got 24"):
        raw_to_bgra(raw, width=4, height=2)
    tags = np.array([[0, 1, SKY_TAG, 12, 13, 14], [15, 16, 17, 18, 19, 21]], dtype=np.uint8)
    semantic = np.zeros((2, 6, 4), dtype=np.uint8)
    semantic[..., 2] = tags
    semantic[..., 0] = 99  # only R carries the tag
    np.testing.assert_array_equal(semantic_tags(semantic), tags)
    expected = [[False, False, False, True, True, True], [True, True, True, True, True, False]]
    np.testing.assert_array_equal(dynamic_mask(tags), expected)
    assert set(DYNAMIC_TAGS) == set(range(12, 20))


def test_compose_render_zeroes_sky_depth():
    rgb = np.zeros((2, 2, 4), dtype=np.uint8)
    rgb[..., 0], rgb[..., 2] = 10, 200  # B = 10, R = 200
    depth = np.broadcast_to(np.array([0x02, 0x8F, 0x5C, 255], np.uint8), (2, 2, 4)).copy()
    semantic = np.zeros((2, 2, 4), dtype=np.uint8)
    semantic[0, 0, 2], semantic[1, 1, 2] = SKY_TAG, 14
    out = compose_render(rgb, depth, semantic)
    assert out.rgb.shape == (2, 2, 3) and out.rgb.dtype == np.uint8
    assert out.rgb[0, 0].tolist() == [200, 0, 10]
    np.testing.assert_allclose(out.depth, [[0.0, 10.0], [10.0, 10.0]], atol=1e-4)
    np.testing.assert_array_equal(out.dynamic, [[False, False], [False, True]])
    with pytest.raises(ShapeMismatchError, match=r"\(H, W, 4\)"):
        compose_render(rgb[..., :3], depth, semantic)


# --- intrinsics -------------------------------------------------------------------------------
def test_intrinsics_round_trip_through_blueprint_attributes():
    camera = PinholeCamera.from_fov(640, 480, 90.0)
    attributes = camera_blueprint_attributes(camera)
    assert attributes["image_size_x"] == "640" and attributes["image_size_y"] == "480"
    assert attributes["fov"] == "90"
    back = camera_from_blueprint_attributes(attributes)
    assert back.fx == pytest.approx(320.0) and back.fy == pytest.approx(320.0)
    assert (back.cx, back.cy) == (320.0, 240.0)
    assert camera_from_blueprint_attributes({}).shape == (600, 800)  # CARLA's defaults


def test_non_carla_intrinsics_are_refused():
    with pytest.raises(InvalidCameraError, match="square pixels"):
        camera_blueprint_attributes(PinholeCamera(64, 48, 50.0, 60.0, 32.0, 24.0))
    with pytest.raises(InvalidCameraError, match="principal point"):
        camera_blueprint_attributes(PinholeCamera(64, 48, 50.0, 50.0, 30.0, 24.0))


# --- weather and time -------------------------------------------------------------------------
def test_weather_parameters_take_the_sun_and_check_the_name():
    for name in WEATHERS:
        params = weather_parameters(name, 42.0, 180.0)
        assert params["sun_altitude_angle"] == 42.0
        assert params["sun_azimuth_angle"] == pytest.approx(90.0)  # south = CARLA +y
    fog, clear = weather_parameters("fog", 10, 0), weather_parameters("clear", 10, 0)
    assert fog["fog_density"] > clear["fog_density"]
    assert compass_to_carla_sun_azimuth(90.0) == 0.0  # east = CARLA +x
    with pytest.raises(UnknownNameError, match="Did you mean 'fog'"):
        weather_parameters("fgo", 10.0, 0.0)


def test_time_helpers():
    noon = local_noon_utc(127.0)
    assert noon == datetime(2024, 5, 1, 3, 32, tzinfo=timezone.utc)
    assert local_solar_hour(noon, 127.0) == pytest.approx(12.0)
    assert local_solar_hour(datetime(2024, 1, 1, 23, 0), -15.0) == pytest.approx(22.0)
    t = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)
    assert plan_time_change(t, t + timedelta(seconds=30), 120.0) == pytest.approx(30.0)
    assert plan_time_change(t, t - timedelta(seconds=1), 120.0) is None  # no rewinding
    assert plan_time_change(t, t + timedelta(hours=2), 120.0) is None  # too far to simulate
    assert plan_time_change(t.replace(tzinfo=None), t, 120.0) == 0.0  # naive = UTC


def test_traffic_seed_is_deterministic_per_time():
    t = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)
    assert traffic_seed(3, t) == traffic_seed(3, t.replace(tzinfo=None))
    seeds = {traffic_seed(3, t + timedelta(seconds=k)) for k in range(50)}
    assert len(seeds) == 50 and all(0 <= s < 2**31 for s in seeds)
    assert traffic_seed(3, t) != traffic_seed(4, t)


def test_split_ticks_and_counts():
    assert split_ticks(1.0, 0.05) == (20, pytest.approx(0.0, abs=1e-12))
    ticks, carry = split_ticks(0.12, 0.05)
    assert ticks == 2 and carry == pytest.approx(0.02)
    ticks, carry = split_ticks(0.03, 0.05, carry)
    assert ticks == 1 and carry == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="time only runs on"):
        split_ticks(-1.0, 0.05)
    assert (scaled_count(80, 0.5), scaled_count(80, 1.5), scaled_count(80, -1)) == (40, 80, 0)


# --- road network -----------------------------------------------------------------------------
def _record(road, lane, s, x, junction=-1):
    y = 1.75 if lane < 0 else -1.75
    return WaypointRecord(road, 0, lane, s, (x, y, 0.0), 3.5, junction, lane < 0)


def test_group_lanes_orders_by_travel_and_drops_junctions():
    records = [_record(1, -1, s, s) for s in (4.0, 0.0, 2.0)]
    records += [_record(1, 1, s, s) for s in (0.0, 2.0, 4.0)]
    records += [_record(9, -1, 0.0, 50.0, junction=7), _record(9, -1, 2.0, 52.0, junction=7)]
    records += [_record(2, -1, 0.0, 80.0)]  # a single waypoint is no polyline
    lanes = group_lanes(records)
    assert list(lanes) == [(1, 0, -1), (1, 0, 1)]
    assert [r.s for r in lanes[(1, 0, -1)]] == [0.0, 2.0, 4.0]
    assert [r.s for r in lanes[(1, 0, 1)]] == [4.0, 2.0, 0.0]


def test_build_road_network_links_lanes_to_junctions():
    lanes = group_lanes([_record(1, lane, s, s) for lane in (-1, 1) for s in (0.0, 2.0, 4.0)])
    links = {(1, 0, -1): (-1, 7), (1, 0, 1): (7, -1)}
    network = build_road_network(FRAME, lanes, links, {7: (10.0, 2.0, 0.0), 8: (0, 0, 0)})
    assert isinstance(network, RoadNetwork) and network.frame == FRAME
    east, west = network.lanes
    np.testing.assert_allclose(east.waypoints[:, 1], -1.75)  # right-hand lane heading east: south
    assert (east.id, east.entry, east.exit, east.width) == (0, -1, 0, 3.5)
    assert (west.id, west.entry, west.exit) == (1, 0, -1)
    (junction,) = network.intersections  # junction 8 touches no lane
    np.testing.assert_allclose(junction.center, [10.0, -2.0, 0.0])
    assert (junction.incoming, junction.outgoing, junction.junction_id) == ((0,), (1,), 7)
    assert network.waypoints().shape == (6, 3)


# --- against the real carla client (offline: no server) ---------------------------------------
def _lanes_xml(left_link: str = "", right_link: str = "") -> str:
    width = '<width sOffset="0" a="3.5" b="0" c="0" d="0"/>'
    return (
        '<laneSection s="0">'
        f'<left><lane id="1" type="driving" level="false"><link>{left_link}</link>{width}'
        "</lane></left>"
        '<center><lane id="0" type="none" level="false"/></center>'
        f'<right><lane id="-1" type="driving" level="false"><link>{right_link}</link>{width}'
        "</lane></right></laneSection>"
    )


def _road_xml(road_id, x, length, junction, link, lane_links=("", "")) -> str:
    return (
        f'<road name="r{road_id}" length="{length}" id="{road_id}" junction="{junction}">'
        f"<link>{link}</link>"
        f'<planView><geometry s="0" x="{x}" y="0" hdg="0" length="{length}"><line/></geometry>'
        '</planView><elevationProfile><elevation s="0" a="0" b="0" c="0" d="0"/>'
        f"</elevationProfile><lateralProfile/><lanes>{_lanes_xml(*lane_links)}</lanes></road>"
    )


# Two 50 m two-way roads along OpenDRIVE +x (east) joined by a 10 m junction (id 100).
JUNCTION_XODR = (
    '<?xml version="1.0" standalone="yes"?><OpenDRIVE>'
    '<header revMajor="1" revMinor="4" name="" version="1" north="0" south="0" east="0" west="0">'
    "<geoReference><![CDATA[+proj=tmerc +lat_0=37.5 +lon_0=127.0]]></geoReference></header>"
    + _road_xml(1, 0, 50, -1, '<successor elementType="junction" elementId="100"/>')
    + _road_xml(2, 60, 50, -1, '<predecessor elementType="junction" elementId="100"/>')
    + _road_xml(
        3,
        50,
        10,
        100,
        '<predecessor elementType="road" elementId="1" contactPoint="end"/>'
        '<successor elementType="road" elementId="2" contactPoint="start"/>',
        ('<predecessor id="1"/><successor id="1"/>', '<predecessor id="-1"/><successor id="-1"/>'),
    )
    + '<junction id="100" name="j">'
    '<connection id="0" incomingRoad="1" connectingRoad="3" contactPoint="start">'
    '<laneLink from="-1" to="-1"/></connection>'
    '<connection id="1" incomingRoad="2" connectingRoad="3" contactPoint="end">'
    '<laneLink from="1" to="1"/></connection></junction></OpenDRIVE>'
)


@pytest.fixture(scope="module")
def carla():
    return pytest.importorskip("carla", reason="carla client not installed")


def test_rotation_matrix_matches_carla_transform(carla):
    for pitch, yaw, roll in [(0, 0, 0), (10, 20, 30), (-45, 135, -60), (89, -170, 5)]:
        transform = carla.Transform(
            carla.Location(1, 2, 3), carla.Rotation(pitch=pitch, yaw=yaw, roll=roll)
        )
        expected = np.array(transform.get_matrix())[:3, :3]
        np.testing.assert_allclose(carla_rotation_matrix(pitch, yaw, roll), expected, atol=1e-5)


def test_weather_parameters_build_carla_weather(carla):
    for name in WEATHERS:
        params = weather_parameters(name, 30.0, 200.0)
        weather = carla.WeatherParameters(**params)
        for key, value in params.items():
            assert getattr(weather, key) == pytest.approx(value, abs=1e-4)


def test_offline_map_georeference_and_road_network(carla):
    from carla_tools.carla_backend import road_network_from_map

    carla_map = carla.Map("junction", JUNCTION_XODR)
    origin = carla_map.transform_to_geolocation(carla.Location(0.0, 0.0, 0.0))
    assert (origin.latitude, origin.longitude) == pytest.approx((37.5, 127.0))
    network = road_network_from_map(carla_map, FRAME, spacing=2.0)
    assert [lane.key for lane in network.lanes] == [(1, 0, -1), (1, 0, 1), (2, 0, -1), (2, 0, 1)]
    into, out_of, onward, back = network.lanes
    # OpenDRIVE's right-hand lane of an eastbound road lies south of the centre line
    np.testing.assert_allclose(into.waypoints[:, 1], -1.75, atol=1e-6)
    np.testing.assert_allclose(out_of.waypoints[:, 1], 1.75, atol=1e-6)
    assert into.waypoints[0, 0] < into.waypoints[-1, 0]  # eastbound, in travel order
    assert back.waypoints[0, 0] > back.waypoints[-1, 0]  # westbound
    assert [(lane.entry, lane.exit) for lane in network.lanes] == [
        (-1, 0),
        (0, -1),
        (0, -1),
        (-1, 0),
    ]
    (junction,) = network.intersections
    np.testing.assert_allclose(junction.center, [55.0, 0.0, 0.0], atol=1e-6)
    assert (junction.incoming, junction.outgoing) == ((0, 3), (1, 2))
