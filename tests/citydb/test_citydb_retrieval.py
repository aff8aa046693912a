"""Two-stage retrieval: stage 1 against brute force, stage 2 on a plane, filters, empty results."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
import quaternion

from cityenv.cache import LRUCache
from cityenv.citydb.reader import CityDB
from cityenv.citydb.retrieval import Candidates, ChunkQuery, DepthCache, Retriever
from cityenv.citydb.writer import CityDBWriter
from cityenv.errors import InvalidPoseError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory

TARGET = PinholeCamera.from_fov(32, 24, 90.0)


def _random_chunk(rng: np.random.Generator, extent: float) -> list[Pose]:
    """A random walk of 1-30 poses with random headings and pitches."""
    length = int(rng.integers(1, 31))
    start = rng.uniform(-extent / 2, extent / 2, 3) * [1.0, 1.0, 0.01]
    steps = rng.normal(0.0, 1.5, (length, 3)) * [1.0, 1.0, 0.05]
    positions = start + np.cumsum(steps, axis=0)
    headings = rng.uniform(0.0, 360.0) + np.cumsum(rng.normal(0.0, 10.0, length))
    pitches = rng.uniform(-10.0, 10.0, length)
    return [
        Pose.from_heading(p, h, pt) for p, h, pt in zip(positions, headings, pitches, strict=True)
    ]


def _brute_force(db: CityDB, view_forwards, poses: list[Pose], radius, max_angle, look, cap):
    """Stage 1 with plain numpy over every panorama and view (no KD-tree)."""
    frames = np.stack([p.position for p in poses])
    forwards = np.stack([p.forward for p in poses])
    pano = db.panorama_positions
    dist = np.linalg.norm(pano[:, None, :] - frames[None], axis=-1)  # (P, L)
    nearest, dmin = dist.argmin(1), dist.min(1)
    p = db.view_panorama
    to_look = frames[nearest[p]] + look * forwards[nearest[p]] - pano[p]  # (V, 3)
    norm = np.linalg.norm(to_look, axis=1)
    facing = (
        np.einsum("vk,vk->v", view_forwards, to_look) >= math.cos(math.radians(max_angle)) * norm
    )
    views = np.flatnonzero((dmin[p] <= radius) & facing)
    rows = sorted((dmin[p[v]], v, p[v], nearest[p[v]]) for v in views)
    return rows[:cap]


def _view_panorama(rng, count, layout):
    """Panorama of each view: 8 views each in order, or 0-5 views each in shuffled order."""
    if layout == "uniform":
        return np.repeat(np.arange(count), 8)
    return rng.permutation(np.repeat(np.arange(count), rng.integers(0, 6, count)))


@pytest.mark.parametrize("layout", ["uniform", "ragged"])
@pytest.mark.parametrize("cap", [16, 100_000])
@pytest.mark.parametrize("angle", [70.0, 120.0])  # cos > 0 is folded into the records
def test_stage1_equals_brute_force(tools, tmp_path, layout, cap, angle):
    rng = np.random.default_rng(10)
    count, extent = 400, 300.0
    positions = rng.uniform(-extent / 2, extent / 2, (count, 3)) * [1.0, 1.0, 0.01]
    view_panorama = _view_panorama(rng, count, layout)
    headings = rng.uniform(0.0, 360.0, view_panorama.size)
    path = tools.build_index_db(
        tmp_path / "db", positions, view_panorama, headings, tools.small_camera()
    )
    db = CityDB.open(path)
    assert (db.views_per_panorama == 8) == (layout == "uniform")
    retriever = Retriever(db, radius=25.0, max_candidates=cap, max_angle_deg=angle)
    rotations = quaternion.from_float_array(db.rotations.astype(np.float64))
    view_forwards = quaternion.as_rotation_matrix(rotations)[:, :, 2]  # not db.view_forwards
    nonempty = 0
    for _ in range(25):
        poses = _random_chunk(rng, extent)
        got = retriever.stage1(poses)
        want = _brute_force(db, view_forwards, poses, 25.0, angle, retriever.look_distance, cap)
        assert got.view_ids.tolist() == [w[1] for w in want]
        assert got.panorama_index.tolist() == [w[2] for w in want]
        assert got.frame_index.tolist() == [w[3] for w in want]
        np.testing.assert_allclose(got.distance, [w[0] for w in want], atol=1e-6)
        nonempty += bool(want)
        same = retriever.stage1(Trajectory.from_poses(poses))  # the quaternion layout path
        assert same.view_ids.tolist() == got.view_ids.tolist()
        assert same.frame_index.tolist() == got.frame_index.tolist()
    assert nonempty >= 10  # the queries exercised real candidate sets


def test_stage1_orders_equal_distances_by_view_id(tools, tmp_path):
    """Panoramas captured at the same place (several traversals) tie on distance."""
    rng = np.random.default_rng(3)
    spots = rng.uniform(-20.0, 20.0, (6, 3)) * [1.0, 1.0, 0.0]
    positions = spots[rng.permutation(np.repeat(np.arange(6), 3))]  # 3 panoramas per spot
    view_panorama, headings = tools.eight_view_layout(positions.shape[0], rng)
    path = tools.build_index_db(
        tmp_path / "db", positions, view_panorama, headings, tools.small_camera()
    )
    db = CityDB.open(path)
    rotations = quaternion.from_float_array(db.rotations.astype(np.float64))
    view_forwards = quaternion.as_rotation_matrix(rotations)[:, :, 2]
    retriever = Retriever(db, radius=30.0, max_candidates=40)
    for heading in (0.0, 90.0, 200.0):
        poses = [Pose.from_heading([1.0, 2.0, 0.0], heading)]
        got = retriever.stage1(poses)
        want = _brute_force(db, view_forwards, poses, 30.0, 60.0, retriever.look_distance, 40)
        assert len(want) == 40
        assert got.view_ids.tolist() == [w[1] for w in want]


def test_prepare_lays_out_trajectories_and_pose_lists_alike(tools, tmp_path):
    rng = np.random.default_rng(4)
    db = _plane_db(tools, tmp_path / "db", PinholeCamera.from_fov(64, 64, 90.0), faces=[0.0])
    retriever = Retriever(db, look_distance=7.0)
    for _ in range(10):
        poses = _random_chunk(rng, 500.0)
        trajectory = Trajectory.from_poses(poses)
        a, b = retriever.prepare(trajectory), retriever.prepare(poses)
        np.testing.assert_allclose(a.matrices, trajectory.matrices, atol=1e-12)
        positions = np.stack([p.position for p in poses])
        forwards = np.stack([p.forward for p in poses])
        c = ChunkQuery.build(positions, forwards, b.matrices, 7.0)
        for q in (a, b, c):
            np.testing.assert_allclose(q.positions, positions, atol=1e-12)
            np.testing.assert_allclose(q.forwards, forwards, atol=1e-12)
            np.testing.assert_allclose(q.look, positions + 7.0 * forwards, atol=1e-9)
            lo, hi = positions.min(0), positions.max(0)
            np.testing.assert_allclose(q.centre, (lo + hi) / 2, atol=1e-12)
            assert q.half_diagonal == pytest.approx(np.linalg.norm(hi - lo) / 2)
            rhs = np.concatenate([positions.T, np.ones((1, len(poses))), [(positions**2).sum(1)]])
            np.testing.assert_allclose(q.distance_rhs, rhs, rtol=1e-12)
            np.testing.assert_allclose(q.frame_rhs[:, :, 1], rhs.T, rtol=1e-12)
            look = positions + 7.0 * forwards
            np.testing.assert_allclose(q.frame_rhs[:, 3:, 0], [[1.0, (v**2).sum()] for v in look])
        assert retriever.prepare(a) is a


def _plane_db(tools, path, tmp_camera, faces, traversals=None, times_us=None):
    """Panoramas at (2, -3 - 2i, 0), one view each facing the given headings."""
    count = len(faces)
    positions = np.array([[2.0, -3.0 - 2.0 * i, 0.0] for i in range(count)])
    return CityDB.open(
        tools.build_index_db(
            path,
            positions,
            np.arange(count),
            np.array(faces, float),
            tmp_camera,
            traversals,
            times_us,
        )
    )


def _plane_depth(db: CityDB, wall_north: float = 20.0, wall_south: float = -40.0):
    """Depth provider: each view sees the wall ahead of it (y = 20 north, y = -40 south)."""

    def provider(view_id, size):
        pose = db.pose(view_id)
        wall = wall_north if pose.forward[1] > 0 else wall_south
        return np.full((size[1], size[0]), abs(wall - pose.position[1]), np.float32)

    return provider


def test_stage2_keeps_the_view_facing_the_target_and_drops_the_one_facing_away(tools, tmp_path):
    cam = PinholeCamera.from_fov(64, 64, 90.0)
    db = _plane_db(tools, tmp_path / "db", cam, faces=[0.0, 180.0])  # north, south
    retriever = Retriever(db, depth_provider=_plane_depth(db), max_angle_deg=180.0)
    target = [Pose.from_heading([0.0, 0.0, 0.0], 0.0)]  # looks north at the wall y = 20
    both = Candidates(np.array([0, 1]), np.array([0, 1]), np.array([0, 0]), np.array([3.6, 5.4]))
    scores = retriever.stage2(both, np.stack([p.matrix for p in target]), TARGET)
    assert scores[0] > 0.8 and scores[1] == 0.0
    result = retriever.retrieve(target, TARGET, k=5)
    assert [r.view_id for r in result.references] == [0]
    assert result.candidates_considered == 2 and not result.empty
    ref = result.references[0]
    assert ref.coverage == pytest.approx(scores[0]) and ref.frame_index == 0
    assert ref.pose.allclose(Pose.from_heading([2.0, -3.0, 0.0], 0.0), atol=1e-6)
    assert ref.camera == cam and ref.distance == pytest.approx(math.hypot(2.0, 3.0))
    np.testing.assert_array_equal(result.per_frame, [0])
    assert result.sink is not None and result.sink.view_id == 0


def test_angle_prefilter_drops_views_facing_away(tools, tmp_path):
    cam = PinholeCamera.from_fov(64, 64, 90.0)
    db = _plane_db(tools, tmp_path / "db", cam, faces=[0.0, 180.0, 90.0])
    retriever = Retriever(db, depth_provider=_plane_depth(db))
    got = retriever.stage1([Pose.from_heading([0.0, 0.0, 0.0], 0.0)])
    assert got.view_ids.tolist() == [0]  # south (1) and east (2, 97 degrees off) are dropped


def test_cross_temporal_exclusions(tools, tmp_path):
    cam = PinholeCamera.from_fov(64, 64, 90.0)
    t0 = int(tools.T0.timestamp() * 1_000_000)
    hour = 3_600_000_000
    db = _plane_db(
        tools,
        tmp_path / "db",
        cam,
        faces=[0.0, 0.0, 0.0],
        traversals=["a", "b", "c"],
        times_us=np.array([t0, t0 + hour, t0 + 720 * hour]),
    )
    retriever = Retriever(db, depth_provider=_plane_depth(db))
    target = [Pose.from_heading([0.0, 0.0, 0.0], 0.0)]

    def ids(**kw):
        return sorted(r.view_id for r in retriever.retrieve(target, TARGET, **kw).references)

    assert ids() == [0, 1, 2]
    assert ids(exclude_traversals=["a"]) == [1, 2]
    assert ids(exclude_traversals="b") == [0, 2]
    assert ids(exclude_traversals=["a", "unknown"]) == [1, 2]
    assert ids(exclude_time=(tools.T0, timedelta(hours=2))) == [2]
    assert ids(exclude_time=(tools.T0 + timedelta(hours=1), timedelta(minutes=59))) == [0, 2]
    assert ids(exclude_traversals=["c"], exclude_time=(tools.T0, timedelta(hours=1))) == []


def test_nothing_in_range_gives_an_empty_result(tools, tmp_path):
    cam = PinholeCamera.from_fov(64, 64, 90.0)
    db = _plane_db(tools, tmp_path / "db", cam, faces=[0.0, 180.0])
    retriever = Retriever(db, depth_provider=_plane_depth(db))
    far = Trajectory.from_poses([Pose.from_heading([5000.0, 0.0, 0.0], 0.0)] * 1)
    result = retriever.retrieve(far, TARGET)
    assert result.empty and result.references == [] and result.sink is None
    assert result.candidates_considered == 0
    np.testing.assert_array_equal(result.per_frame, [-1])
    # Candidates in range whose depth covers nothing: still empty, not an exception; the sink
    # falls back to the stage-1 view nearest to the last pose.
    away = [Pose.from_heading([0.0, -10.0, 0.0], 180.0), Pose.from_heading([0.0, -11.0, 0.0], 180)]
    no_depth = Retriever(db, depth_provider=lambda v, s: np.zeros((s[1], s[0]), np.float32))
    result = no_depth.retrieve(away, TARGET)
    assert result.empty and result.candidates_considered == 1
    np.testing.assert_array_equal(result.per_frame, [-1, -1])
    assert result.sink is not None and result.sink.view_id == 1 and result.sink.coverage == 0.0
    assert result.sink.frame_index == 1


def test_per_frame_nearest_reference_and_lookahead_sink(tools, tmp_path):
    cam = PinholeCamera.from_fov(64, 64, 90.0)
    positions = np.array([[1.0, y, 0.0] for y in (0.0, 15.0, 30.0)])
    path = tools.build_index_db(tmp_path / "db", positions, np.arange(3), np.zeros(3), cam)
    db = CityDB.open(path)
    retriever = Retriever(db, depth_provider=_plane_depth(db, wall_north=60.0), radius=30.0)
    poses = [Pose.from_heading([0.0, y, 0.0], 0.0) for y in np.linspace(0.0, 30.0, 7)]
    result = retriever.retrieve(Trajectory.from_poses(poses, fps=10.0), TARGET, k=3)
    assert sorted(r.view_id for r in result.references) == [0, 1, 2]
    nearest_view = [result.references[i].view_id for i in result.per_frame]
    assert nearest_view == [0, 0, 1, 1, 1, 2, 2]  # y = 0, 5 | 10, 15, 20 | 25, 30
    assert result.sink is not None and result.sink.view_id == 2
    one = retriever.retrieve(poses, TARGET, k=1)
    assert len(one.references) == 1 and one.sink.view_id == 2  # the sink may lie beyond top-k
    assert set(one.per_frame.tolist()) == {0}


def test_depth_cache_and_provider_checks(tools, tmp_path):
    cam = PinholeCamera.from_fov(64, 64, 90.0)
    db = _plane_db(tools, tmp_path / "db", cam, faces=[0.0])
    calls = []
    inner = _plane_depth(db)

    def counting(view_id, size):
        calls.append((view_id, size))
        return inner(view_id, size)

    cache = DepthCache(capacity=4)
    retriever = Retriever(db, depth_provider=counting, cache=cache, depth_size=(32, 16))
    target = [Pose.from_heading([0.0, 0.0, 0.0], 0.0)]
    retriever.retrieve(target, TARGET)
    retriever.retrieve(target, TARGET)
    assert calls == [(0, (32, 16))] and len(cache) == 1
    assert isinstance(cache, LRUCache) and (cache.hits, cache.misses) == (1, 1)
    bad = Retriever(db, depth_provider=lambda v, s: np.zeros((3, 3), np.float32))
    with pytest.raises(ShapeMismatchError, match=r"depth_provider must return shape.*\(64, 64\)"):
        bad.retrieve(target, TARGET)
    with pytest.raises(InvalidPoseError, match="at least one Pose"):
        retriever.retrieve([], TARGET)


def test_retrieval_from_stored_depths(tools, tmp_path):
    """End to end through the default provider: depths decoded from the shard and resampled."""
    cam = PinholeCamera.from_fov(48, 48, 90.0)
    with CityDBWriter(tmp_path / "db", city="c", frame=tools.FRAME) as writer:
        for i, heading in enumerate([0.0, 180.0]):
            pose = Pose.from_heading([2.0, -3.0, 0.0], heading)
            depth = np.full((48, 48), 23.0 if heading == 0.0 else 37.0, np.float32)
            writer.add_view(
                image=np.zeros((48, 48, 3), np.uint8),
                depth=depth,
                camera=cam,
                pose=pose,
                panorama_id="p",
                traversal_id="t",
                capture_time=tools.T0,
                view_index=i,
            )
    db = CityDB.open(tmp_path / "db")
    result = Retriever(db, max_angle_deg=180.0).retrieve(
        [Pose.from_heading([0.0, 0.0, 0.0], 0.0)], TARGET
    )
    assert [r.view_id for r in result.references] == [0]
    assert result.references[0].coverage > 0.8
