"""RerunRecorder around the real ``CityWorld-Town-v0`` on a tiny town, read back from the .rrd."""

from __future__ import annotations

import gymnasium as gym
import pytest

import cityenv  # noqa: F401  (registers the CityWorld IDs)
from cityenv.viz import RerunRecorder
from cityenv.viz import log as L

# as tests/envs does: a 1 x 1 block town with 64 x 64 references (about 2 s to build)
TINY_TOWN = {"blocks": (1, 1), "size": 64, "spacing_m": 10.0, "progress": False}
LENGTH = 3
STEPS = 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A temporary ``CITYENV_CACHE`` holding the tiny town, so the user's cache is untouched."""
    from cityenv.envs.town import build_town_db

    patch = pytest.MonkeyPatch()
    patch.setenv("CITYENV_CACHE", str(tmp_path_factory.mktemp("viz-cityenv-cache")))
    patch.delenv("CITYENV_DATA", raising=False)
    build_town_db(**TINY_TOWN)
    yield
    patch.undo()


@pytest.mark.parametrize("full_info", [False, True])
def test_recorder_around_city_world_town(cache, tmp_path, read_rrd, full_info):
    env = gym.make(
        "CityWorld-Town-v0",
        town=TINY_TOWN,
        width=64,
        height=48,
        chunk_length=LENGTH,
        full_info=full_info,
    )
    path = tmp_path / "town.rrd"
    recorder = RerunRecorder(env, path)
    recorder.reset(seed=0)
    for _ in range(STEPS):
        recorder.step(0)  # straight on
    recorder.close()
    rrd = read_rrd(path)
    # the reset frame, then STEPS chunks of LENGTH frames, each at its own "frame" index
    assert rrd.rows("/" + L.CAMERA, "EncodedImage:blob") == 1 + STEPS * LENGTH
    assert rrd.rows("/" + L.CAMERA, "Transform3D:quaternion") == 1 + STEPS * LENGTH
    assert rrd.rows("/" + L.WARP_IMAGE, "EncodedImage:blob") == STEPS * LENGTH
    assert rrd.static[("/" + L.CAMERA, "Pinhole:image_from_camera")] == 1
    assert rrd.rows("/scalars/reward", "Scalars:scalars") == STEPS
    assert rrd.rows("/scalars/progress_m", "Scalars:scalars") == STEPS
    for entity in (
        L.TRAJECTORY,
        L.ROUTE,
        L.MAP_EGO,
        L.MAP_TRAJECTORY,
        L.MAP_ROUTE,
        L.reference_path(0),
        L.DEPTH_POINTS,
    ):
        assert "/" + entity in rrd.entities, entity
    assert len(recorder.log_seconds) == 1 + STEPS
