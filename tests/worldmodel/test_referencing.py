"""Referencing: preparation, the one cache and its identity rule, the nearest-reference warp."""

from __future__ import annotations

import numpy as np
import pytest

from cityenv.errors import ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose
from cityenv.geometry.splat import forward_splat
from cityenv.worldmodel.base import ChunkReferences
from cityenv.worldmodel.referencing import (
    SKY_DEPTH_M,
    Referencer,
    ReferenceView,
    fit_image,
    nearest_sources,
    prepare_reference,
    warp_nearest,
)

BIG = PinholeCamera.from_fov(64, 48, 90.0)
CAMERA = PinholeCamera.from_fov(32, 24, 90.0)


def view(view_id: int, metres: float = 0.0) -> ReferenceView:
    rng = np.random.default_rng(view_id)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    depth = np.full((48, 64), 6.0, np.float32)
    depth[:12] = 0.0  # sky
    return ReferenceView(view_id, image, depth, BIG, Pose.from_heading([0, metres, 1.6], 0), "t0")


def test_prepare_resizes_rescales_and_puts_the_sky_at_infinity() -> None:
    ref = view(0)
    prepared = prepare_reference(ref, 32, 24)
    assert prepared.image.shape == (24, 32, 3) and prepared.image.dtype == np.uint8
    assert prepared.camera == BIG.rescaled(32, 24)
    assert prepared.depth[0].tolist() == [SKY_DEPTH_M] * 32 and prepared.depth[-1, 0] == 6.0
    np.testing.assert_array_equal(prepared.matrix, ref.pose.matrix)
    image, camera = fit_image(ref.image, BIG, 32, 24)  # a sink frame: colour only
    np.testing.assert_array_equal(image, prepared.image)
    assert camera == prepared.camera
    with pytest.raises(ShapeMismatchError):
        prepare_reference(ReferenceView(1, ref.image[:10], ref.depth, BIG, ref.pose), 32, 24)


def test_one_cache_hits_only_for_the_very_same_view_object() -> None:
    referencer = Referencer(cache_size=2)
    a = view(0)
    first = referencer.prepare(a, 32, 24)
    assert referencer.prepare(a, 32, 24) is first and referencer.cache.hits == 1
    twin = view(0)  # the same view id from another database: never served a's entry
    assert referencer.prepare(twin, 32, 24).view is twin
    assert referencer.prepare(a, 64, 48) is not first  # another size, another entry
    referencer.prepare(view(1), 32, 24)  # capacity 2: the least recently used goes
    assert len(referencer.cache) == 2


def test_nearest_sources_fall_back_to_the_best_ranked() -> None:
    assert nearest_sources(np.array([1, -1, 0, 5]), 2, 3).tolist() == [1, 0, 0, 0]
    assert nearest_sources(np.array([-1, -1]), 0, 1).tolist() == [0, 0]  # the sink alone
    assert nearest_sources(np.array([-1]), 0, 0).tolist() == [-1]  # nothing at all


def test_warp_nearest_is_each_frames_own_splat_on_plain_arrays() -> None:
    refs = [prepare_reference(view(i, 4.0 * i), 32, 24) for i in range(2)]
    targets = np.stack([Pose.from_heading([0, 1.0 + i, 1.6], 0).matrix for i in range(3)])
    warps, masks = warp_nearest(refs, np.array([0, 1, -1]), targets, CAMERA)
    assert warps.shape == (3, 24, 32, 3) and masks.shape == (3, 24, 32)
    for i, k in enumerate([0, 1]):
        r = refs[k]
        expected, hit = forward_splat(r.image, r.depth, r.camera, r.matrix, CAMERA, targets[i])
        np.testing.assert_array_equal(warps[i], expected)
        np.testing.assert_array_equal(masks[i], hit)
    assert not warps[2].any() and not masks[2].any()  # no reference: zeros


def test_prepare_chunk_checks_lengths_and_adds_the_sink_once() -> None:
    referencer = Referencer()
    a, b = view(0), view(1, 4.0)
    chunk = referencer.prepare_chunk(ChunkReferences([a], np.array([0, -1]), b), 2, CAMERA)
    assert [s.view for s in chunk.sources] == [a, b] and chunk.nearest.tolist() == [0, 0]
    assert [p.view for p in chunk.frame_order(1, 2)] == [a, b]
    same = referencer.prepare_chunk(ChunkReferences([a], np.array([0]), a), 1, CAMERA)
    assert len(same.sources) == 1 and same.sink is same.views[0]
    with pytest.raises(ShapeMismatchError, match=r"one reference index per pose \(3\), got 2"):
        referencer.prepare_chunk(ChunkReferences([a], np.array([0, 0])), 3, CAMERA)
