"""A perfect world model for the world tests (prompt adherence, long routes): a real
alternative model, not a mock; imported by tests/eval/test_adherence.py and test_longroute.py."""

from __future__ import annotations

from datetime import timedelta

from cityenv.eval.render import CONDITIONS, render_condition
from cityenv.geometry.pose import Trajectory
from cityenv.worldmodel.base import ChunkOutput, ChunkReferences, WorldModel


class OracleWorldModel(WorldModel):
    """A perfect world model: it renders the town under the condition its prompt names.

    Trajectories of the tests start at timestamp 0, so a chunk's world clock is the condition's
    time plus the chunk's first timestamp, as the ground-truth renderer sets it.
    """

    def __init__(self, renderer) -> None:
        self.renderer = renderer
        self.by_caption = {c.caption: c for c in CONDITIONS.values()}

    def reset(self, *, pose, camera, references, start_image=None, prompt=None, generator=None):
        self.camera, self.condition = camera, self.by_caption[prompt]
        frames, _ = render_condition(
            self.renderer, Trajectory.from_poses([pose]), camera, self.condition
        )
        return frames[0]

    def generate(self, trajectory: Trajectory, references: ChunkReferences) -> ChunkOutput:
        when = self.condition.time + timedelta(seconds=float(trajectory.timestamps[0]))
        frames, _ = self.renderer.render(
            trajectory, self.camera, time=when, weather=self.condition.weather
        )
        return ChunkOutput(frames, None, None, references)
