"""RerunRecorder around a contract-shaped env rendered in a tiny town, read back with RrdReader."""

from __future__ import annotations

from types import SimpleNamespace

import gymnasium
import numpy as np
import pytest
import rerun as rr
from gymnasium import spaces

from cityenv.geometry import LocalFrame
from cityenv.viz import RerunRecorder
from cityenv.viz import log as L

LENGTH = 3


class _Graph:
    """The slice of RoadGraph the recorder uses: the lane's waypoints as nodes."""

    def __init__(self, positions: np.ndarray) -> None:
        self.positions = positions

    def nearest_node(self, position: np.ndarray) -> int:
        return int(np.argmin(np.linalg.norm(self.positions - position, axis=1)))

    def shortest_path(self, a: int, b: int) -> list[int]:
        return list(range(a, b + 1)) if a <= b else list(range(a, b - 1, -1))


class ContractEnv(gymnasium.Env):
    """Emits obs and info with the keys of the env contract, from pre-rendered chunks."""

    metadata = {"render_modes": []}

    def __init__(self, make_chunk, camera, lane) -> None:
        self.make_chunk, self.camera = make_chunk, camera
        self.db = SimpleNamespace(frame=LocalFrame(37.5665, 126.9780, 30.0))
        self.road_graph, self.goal_node = _Graph(lane), len(lane) - 1
        h, w = camera.height, camera.width
        self.observation_space = spaces.Dict(
            {"frames": spaces.Box(0, 255, (LENGTH, h, w, 3), np.uint8)}
        )
        self.action_space = spaces.Discrete(4)
        self._step = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._step = 0
        chunk = self.make_chunk(1, length=1, num_refs=0)
        self.pose = chunk.trajectory[0]
        obs = {"frames": chunk.output.frames, "geo": np.zeros(2)}
        return obs, {"pose": self.pose, "distance_to_goal": 100.0}

    def step(self, action):
        self._step += 1
        chunk = self.make_chunk(self._step, length=LENGTH, num_refs=2 - self._step % 2)
        self.pose = chunk.trajectory[-1]
        info = {
            "pose": self.pose,
            "trajectory": chunk.trajectory,
            "output": chunk.output,
            "references_used": len(chunk.output.references.views),
            "distance_to_goal": 100.0 - self._step,
            "progress_m": float(self._step),
        }
        return {"frames": chunk.output.frames}, 0.5, False, False, info


@pytest.fixture
def recorded(tmp_path, make_chunk, camera, lane, read_rrd):
    path = tmp_path / "run.rrd"
    env = RerunRecorder(ContractEnv(make_chunk, camera, lane), path, jpeg_quality=85)
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_space.sample())
    env.close()
    return read_rrd(path), env


def test_recorder_logs_every_frame(recorded):
    rrd, env = recorded
    # the reset frame plus 3 chunks of LENGTH frames, each at its own "frame" index
    assert rrd.rows("/" + L.CAMERA, "EncodedImage:blob") == 1 + 3 * LENGTH
    assert rrd.rows("/" + L.CAMERA, "Transform3D:quaternion") == 1 + 3 * LENGTH
    assert rrd.rows("/" + L.WARP_IMAGE, "EncodedImage:blob") == 3 * LENGTH
    assert rrd.rows("/" + L.WARP_MASK, "SegmentationImage:buffer") == 3 * LENGTH
    assert rrd.rows("/scalars/reward", "Scalars:scalars") == 3
    assert rrd.rows("/scalars/distance_to_goal", "Scalars:scalars") == 4
    assert rrd.num_blueprints == 1
    assert len(env.log_seconds) == 4


def test_recorder_entities(recorded):
    rrd, _ = recorded
    for entity in (
        L.WORLD,
        L.TRAJECTORY,
        L.ROUTE,
        L.SINK,
        L.DEPTH_POINTS,
        L.MAP_EGO,
        L.MAP_TRAJECTORY,
        L.MAP_ROUTE,
        L.MAP_GOAL,
        L.MAP_REFERENCES,
        L.reference_path(0),
        L.reference_path(1),
        "scalars/progress_m",
        "scalars/references_used",
    ):
        assert "/" + entity in rrd.entities, entity
    assert rrd.rows("/" + L.MAP_ROUTE, "GeoLineStrings:line_strings") == 1
    # steps 1 and 3 use 1 reference, step 2 uses 2: slot 1 is logged once and cleared once
    assert rrd.rows("/" + L.reference_path(1), "EncodedImage:blob") == 1
    assert rrd.rows("/" + L.reference_path(1), "Clear:is_recursive") == 1


def test_recorder_frame_timeline_is_sequential(recorded):
    rrd, _ = recorded
    frames = []
    for chunk in rrd.chunks:
        if chunk.entity_path == "/" + L.CAMERA and not chunk.is_static:
            batch = chunk.to_record_batch()
            if "EncodedImage:blob" in batch.schema.names:
                frames += batch.column("frame").to_pylist()
    assert sorted(frames) == list(range(1 + 3 * LENGTH))


def test_recorder_needs_a_sink(make_chunk, camera, lane):
    with pytest.raises(ValueError, match="needs somewhere to record"):
        RerunRecorder(ContractEnv(make_chunk, camera, lane), None)


def test_recorder_into_a_given_recording(make_chunk, camera, lane):
    rec = rr.RecordingStream("cityenv_test_viz", default_enabled=False)
    env = RerunRecorder(ContractEnv(make_chunk, camera, lane), None, recording=rec)
    env.reset(seed=0)
    env.step(0)
    env.close()
    assert env.recording is rec


def test_second_episode_continues_the_timelines(tmp_path, make_chunk, camera, lane, read_rrd):
    path = tmp_path / "two.rrd"
    env = RerunRecorder(ContractEnv(make_chunk, camera, lane), path, jpeg_quality=None)
    for _ in range(2):
        env.reset()
        env.step(0)
    env.close()
    rrd = read_rrd(path)
    rows = []
    for chunk in rrd.chunks:
        batch = chunk.to_record_batch()
        if chunk.entity_path == "/" + L.CAMERA and "Image:buffer" in batch.schema.names:
            frames, times = batch.column("frame"), batch.column("sim_time")
            rows += zip(frames.to_pylist(), times.to_pylist(), strict=True)
    rows.sort()
    assert [f for f, _ in rows] == list(range(2 * (1 + LENGTH)))
    times = [t for _, t in rows]
    assert all(a < b for a, b in zip(times, times[1:], strict=False))
    # the 3D path restarts with the episode: its last strip holds one chunk plus the start
    strips = rrd.column("/" + L.TRAJECTORY, "LineStrips3D:strips")
    assert len(strips[-1][0]) == 1 + LENGTH


class _NoTrajectory(gymnasium.Wrapper):
    """Drops "trajectory" and "output" from info: the recorder holds the pose per frame."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {"pose": info["pose"]}


def test_env_without_trajectory_logs_frames_from_obs(tmp_path, make_chunk, camera, lane, read_rrd):
    path = tmp_path / "plain.rrd"
    env = RerunRecorder(_NoTrajectory(ContractEnv(make_chunk, camera, lane)), path)
    env.reset()
    env.step(0)
    env.close()
    rrd = read_rrd(path)
    assert rrd.rows("/" + L.CAMERA, "EncodedImage:blob") == 1 + LENGTH
    assert rrd.rows("/" + L.CAMERA, "Transform3D:translation") == 1 + LENGTH
    assert "/" + L.WARP_IMAGE not in rrd.entities


def test_warps_can_be_left_out(tmp_path, make_chunk, camera, lane, read_rrd):
    path = tmp_path / "nowarp.rrd"
    env = RerunRecorder(ContractEnv(make_chunk, camera, lane), path, log_warps=False)
    env.reset()
    env.step(0)
    env.close()
    entities = read_rrd(path).entities
    assert "/" + L.WARP_IMAGE not in entities and "/" + L.WARP_MASK not in entities
    assert "/" + L.CAMERA in entities
