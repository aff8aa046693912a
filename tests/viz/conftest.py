"""Fixtures of the viz tests: a tiny procedural town, chunks rendered in it, an .rrd reader."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from rerun.chunk import RrdReader

from carla_tools.town import ProceduralTown
from cityenv.geometry import PinholeCamera, Pose, Trajectory, forward_splat
from cityenv.worldmodel.base import ChunkOutput, ChunkReferences
from cityenv.worldmodel.referencing import ReferenceView

CAMERA = PinholeCamera.from_fov(64, 48, 90.0)
REF_CAMERA = PinholeCamera.from_fov(48, 48, 90.0)
FPS = 10.0


@pytest.fixture(scope="session")
def camera() -> PinholeCamera:
    """Intrinsics of the generated frames in these tests (64x48, 90 degrees)."""
    return CAMERA


@pytest.fixture(scope="module")
def town():
    """A 2x2-block town with no actors (deterministic renders)."""
    with ProceduralTown(seed=0, blocks=(2, 2), vehicle_density=0, pedestrian_density=0) as t:
        yield t


@pytest.fixture(scope="module")
def lane(town):
    """Waypoints ``(N, 3)`` of the town's longest lane, lifted to camera height."""
    lanes = town.road_network().lanes
    points = max(lanes, key=lambda la: len(la.waypoints)).waypoints.copy()
    points[:, 2] = 1.6
    return points


def _heading(a: np.ndarray, b: np.ndarray) -> float:
    d = b - a
    return float(np.degrees(np.arctan2(d[0], d[1])) % 360.0)


@dataclass
class Chunk:
    """One synthetic env step: the chunk's trajectory and the world model's output."""

    trajectory: Trajectory
    output: ChunkOutput


def _reference(town, view_id: int, position: np.ndarray, heading: float) -> ReferenceView:
    pose = Pose.from_heading(position, heading)
    rgb, depth, _ = town.render(REF_CAMERA, pose)
    return ReferenceView(view_id, rgb, depth, REF_CAMERA, pose, "ref-pass")


@pytest.fixture(scope="module")
def make_chunk(town, lane):
    """``make_chunk(step, length, num_refs)``: chunk ``step`` (1-based) of ``length`` frames."""

    def make(step: int, length: int = 3, num_refs: int = 2) -> Chunk:
        first = (step - 1) * length + 1
        idx = [min(first + i, len(lane) - 2) for i in range(length)]
        poses = [Pose.from_heading(lane[i], _heading(lane[i], lane[i + 1])) for i in idx]
        times = np.array([first + i for i in range(length)], np.float64) / FPS
        trajectory = Trajectory.from_poses(poses, timestamps=times)
        frames = np.stack([town.render(CAMERA, p).rgb for p in poses])
        heading = _heading(lane[idx[0]], lane[idx[0] + 1])
        refs = [_reference(town, 100 * step + k, lane[idx[0]], heading) for k in range(num_refs)]
        if refs:
            warps, masks = _splat(refs[0], trajectory)
            per_frame = np.zeros(length, np.int64)
        else:
            warps = masks = None
            per_frame = np.full(length, -1, np.int64)
        references = ChunkReferences(refs, per_frame, refs[-1] if refs else None)
        return Chunk(trajectory, ChunkOutput(frames, warps, masks, references))

    return make


def _splat(ref: ReferenceView, trajectory: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """Warps uint8 ``(L, H, W, 3)`` and masks bool ``(L, H, W)`` of ``ref`` into each frame."""
    out = [forward_splat(ref.image, ref.depth, ref.camera, ref.pose, CAMERA, p) for p in trajectory]
    return np.stack([w for w, _ in out]), np.stack([m for _, m in out])


@dataclass
class RrdSummary:
    """What an .rrd holds: rows per (entity, component) of temporal and static data."""

    temporal: Counter
    static: Counter
    chunks: list
    num_blueprints: int

    @property
    def entities(self) -> set[str]:
        return {e for e, _ in self.temporal} | {e for e, _ in self.static}

    def rows(self, entity: str, component_prefix: str) -> int:
        """Temporal rows of ``entity`` holding a component whose name starts with the prefix."""
        return sum(
            n
            for (e, c), n in self.temporal.items()
            if e == entity and c.startswith(component_prefix)
        )

    def column(self, entity: str, component: str) -> list:
        """Every temporal value of ``entity``'s ``component``, sorted by the ``frame`` timeline."""
        values = []
        for chunk in self.chunks:
            batch = chunk.to_record_batch()
            if (
                chunk.entity_path == entity
                and not chunk.is_static
                and component in batch.schema.names
            ):
                frames = (
                    batch.column("frame").to_pylist() if "frame" in batch.schema.names else None
                )
                for i, v in enumerate(batch.column(component).to_pylist()):
                    if v is not None:
                        values.append((frames[i] if frames else i, v))
        return [v for _, v in sorted(values, key=lambda fv: fv[0])]


def _component_counts(chunk) -> dict[str, int]:
    """Non-null values per component column of a chunk (rows that logged that component)."""
    batch = chunk.to_record_batch()
    return {
        name: len(batch) - batch.column(name).null_count
        for name in batch.schema.names
        if ":" in name
    }


@pytest.fixture
def read_rrd():
    """``read_rrd(path) -> RrdSummary`` via :class:`rerun.chunk.RrdReader`."""

    def read(path: Path) -> RrdSummary:
        reader = RrdReader(path)
        temporal, static, chunks = Counter(), Counter(), []
        for chunk in reader.stream():
            chunks.append(chunk)
            target = static if chunk.is_static else temporal
            for component, count in _component_counts(chunk).items():
                target[(chunk.entity_path, component)] += count
        return RrdSummary(temporal, static, chunks, len(reader.blueprints()))

    return read
