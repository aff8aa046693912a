"""The default Rerun layout of a cityenv recording."""

from __future__ import annotations

import rerun.blueprint as rrb

from cityenv.viz.log import CAMERA, REFERENCES, SCALARS, reference_path

__all__ = ["default_blueprint"]


def default_blueprint(num_references: int = 5) -> rrb.Blueprint:
    """The default layout: ENU world in 3D, generated frame, warp, map, references, scalars.

    Args:
        num_references: Number of reference slots to give a 2D view (the env's ``K``).

    Returns:
        The blueprint; send it with ``rec.send_blueprint`` or pass it to ``rec.save`` /
        ``rec.spawn`` as ``default_blueprint``.
    """
    references = [
        rrb.Spatial2DView(origin=reference_path(k), name=f"reference {k}")
        for k in range(int(num_references))
    ]
    left = rrb.Vertical(
        rrb.Spatial3DView(origin="world", name="world (ENU)"),
        rrb.Horizontal(
            rrb.TimeSeriesView(
                origin=SCALARS,
                contents=["$origin/progress_m", "$origin/distance_to_goal"],
                name="metres",
            ),
            rrb.TimeSeriesView(
                origin=SCALARS,
                contents=["$origin/reward", "$origin/references_used"],
                name="reward, references",
            ),
        ),
        row_shares=[3, 1],
    )
    right = rrb.Vertical(
        rrb.Horizontal(
            rrb.Spatial2DView(origin=CAMERA, name="generated"),
            rrb.Spatial2DView(origin="warp", name="warp + mask"),
        ),
        rrb.MapView(origin="map", name="map", zoom=17.0),
        rrb.Grid(*references, name=REFERENCES) if references else rrb.Grid(name=REFERENCES),
        row_shares=[2, 2, 1],
    )
    return rrb.Blueprint(rrb.Horizontal(left, right, column_shares=[3, 2]))
