"""Triangle meshes of the procedural town, as flat float32 vertex arrays.

Every vertex has :data:`VERTEX_FLOATS` floats laid out as :data:`VERTEX_FORMAT` (moderngl format
string) with the attribute names in :data:`VERTEX_ATTRIBUTES`:

=========  ====  =================================================================================
position   3     ENU metres (static meshes) or the actor's local frame (x forward, y left, z up)
normal     3     unit outward normal in the same frame
color      3     base colour, RGB in [0, 1]
color2     3     material-specific second colour (see :class:`Material`)
uv         2     material-specific surface coordinates in metres
params     4     ``(material, p1, p2, p3)``
=========  ====  =================================================================================

Triangles are unindexed (three vertices each) and wound counter-clockwise seen from the side the
normal points to (the winding is fixed from the normal, so callers need not care).
The fragment shader in :mod:`carla_tools.town.renderer` draws facade windows, lane markings,
crosswalks and paving procedurally from ``uv`` and ``params``; no textures are needed.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from carla_tools.town.layout import (
    CURB_HEIGHT,
    JUNCTION_MARGIN,
    SIGNAL_HEIGHT,
    Building,
    TownLayout,
    inset_polygon,
)

VERTEX_FLOATS = 18
VERTEX_FORMAT = "3f 3f 3f 3f 2f 4f"
VERTEX_ATTRIBUTES = ("in_pos", "in_normal", "in_color", "in_color2", "in_uv", "in_params")


class Material(IntEnum):
    """Shading models understood by the fragment shader (``params[0]``).

    PLAIN: Lambert with ``color``.
    FACADE: windows on a grid; ``uv = (metres along the wall, metres above the road)``,
        ``params = (1, window pitch, storey height, 2 * seed + storefront)``,
        ``color2`` = shop colour.
    ROAD: asphalt with markings;
        ``uv = (metres along the segment, metres right of the centre line)``,
        ``params = (2, lanes per direction, segment length, 0)``,
        ``color2 = (junction clearance at start, clearance at end, 0)``.
    PAVING: sidewalk tiles from the world position.
    EMISSIVE: ``color`` by day plus ``color2`` glowing, stronger at night (lamps, signs, lights).
    GROUND: grass / earth with noise.
    GLASS: dark glossy (car windows).
    """

    PLAIN = 0
    FACADE = 1
    ROAD = 2
    PAVING = 3
    EMISSIVE = 4
    GROUND = 5
    GLASS = 6


# --- primitives -----------------------------------------------------------------------------
def triangles(
    positions: np.ndarray,
    normals: np.ndarray,
    color: np.ndarray,
    *,
    color2: np.ndarray | None = None,
    uv: np.ndarray | None = None,
    params: np.ndarray | None = None,
) -> np.ndarray:
    """Pack triangles into vertex rows, fixing each triangle's winding from its normal.

    Args:
        positions: Triangle corners, shape ``(T, 3, 3)``.
        normals: One normal per triangle, shape ``(T, 3)`` (or ``(3,)`` for all).
        color: RGB per triangle ``(T, 3)`` or for all ``(3,)``.
        color2: Like ``color``; zeros if None.
        uv: Per-corner surface coordinates, shape ``(T, 3, 2)``; zeros if None.
        params: ``(material, p1, p2, p3)`` per triangle ``(T, 4)`` or for all ``(4,)``.

    Returns:
        Vertex rows, shape ``(3 T, VERTEX_FLOATS)`` float32.
    """
    positions = np.asarray(positions, dtype=np.float64)
    t = positions.shape[0]
    normals = np.broadcast_to(np.asarray(normals, dtype=np.float64), (t, 3))
    cross = np.cross(positions[:, 1] - positions[:, 0], positions[:, 2] - positions[:, 0])
    flip = np.sum(cross * normals, axis=1) < 0
    order = np.where(flip[:, None], [0, 2, 1], [0, 1, 2])
    positions = np.take_along_axis(positions, order[:, :, None], axis=1)
    uv = np.zeros((t, 3, 2)) if uv is None else np.take_along_axis(uv, order[:, :, None], axis=1)
    out = np.empty((t, 3, VERTEX_FLOATS), dtype=np.float32)
    out[:, :, 0:3] = positions
    out[:, :, 3:6] = normals[:, None, :]
    out[:, :, 6:9] = np.broadcast_to(np.asarray(color, dtype=np.float64).reshape(-1, 3), (t, 3))[
        :, None
    ]
    c2 = np.zeros(3) if color2 is None else np.asarray(color2, dtype=np.float64)
    out[:, :, 9:12] = np.broadcast_to(c2.reshape(-1, 3), (t, 3))[:, None]
    out[:, :, 12:14] = uv
    p = np.zeros(4) if params is None else np.asarray(params, dtype=np.float64)
    out[:, :, 14:18] = np.broadcast_to(p.reshape(-1, 4), (t, 4))[:, None]
    return out.reshape(-1, VERTEX_FLOATS)


def quads(
    corners: np.ndarray,
    normals: np.ndarray,
    color: np.ndarray,
    *,
    color2: np.ndarray | None = None,
    uv: np.ndarray | None = None,
    params: np.ndarray | None = None,
) -> np.ndarray:
    """Pack planar convex quads (two triangles each).

    Args:
        corners: Quad corners in order around the quad, shape ``(Q, 4, 3)``.
        normals: Per quad ``(Q, 3)`` or ``(3,)``.
        color: Per quad ``(Q, 3)`` or ``(3,)``.
        color2: Per quad ``(Q, 3)`` or ``(3,)``.
        uv: Per corner, shape ``(Q, 4, 2)``.
        params: Per quad ``(Q, 4)`` or ``(4,)``.

    Returns:
        Vertex rows, shape ``(6 Q, VERTEX_FLOATS)`` float32.
    """
    corners = np.asarray(corners, dtype=np.float64)
    q = corners.shape[0]
    idx = np.array([[0, 1, 2], [0, 2, 3]])
    tri = corners[:, idx].reshape(2 * q, 3, 3)

    def per_tri(a: np.ndarray | None, width: int) -> np.ndarray | None:
        if a is None:
            return None
        a = np.asarray(a, dtype=np.float64)
        return np.repeat(np.broadcast_to(a.reshape(-1, width), (q, width)), 2, axis=0)

    tuv = None if uv is None else np.asarray(uv, dtype=np.float64)[:, idx].reshape(2 * q, 3, 2)
    return triangles(
        tri, per_tri(normals, 3), per_tri(color, 3), color2=per_tri(color2, 3), uv=tuv,
        params=per_tri(params, 4),
    )  # fmt: skip


def prism(
    footprint: np.ndarray,
    z0: float,
    z1: float,
    color: np.ndarray,
    *,
    top_color: np.ndarray | None = None,
    wall_params: np.ndarray | None = None,
    color2: np.ndarray | None = None,
    top_params: np.ndarray | None = None,
    bottom: bool = False,
) -> np.ndarray:
    """A vertical prism over a convex counter-clockwise footprint.

    Walls get ``uv = (metres along the wall from its first corner, height z)``.

    Args:
        footprint: Outline in xy, shape ``(K, 2)``, convex, counter-clockwise.
        z0: Bottom height.
        z1: Top height.
        color: Wall colour ``(3,)``.
        top_color: Top colour ``(3,)``; ``color`` if None.
        wall_params: ``params`` of the walls ``(4,)``; plain if None.
        color2: ``color2`` of the walls ``(3,)``.
        top_params: ``params`` of the top face ``(4,)``.
        bottom: Also close the bottom.

    Returns:
        Vertex rows, shape ``(N, VERTEX_FLOATS)`` float32.
    """
    fp = np.asarray(footprint, dtype=np.float64)
    nxt = np.roll(fp, -1, axis=0)
    k = len(fp)
    z0a, z1a = np.full((k, 1), z0), np.full((k, 1), z1)
    corners = np.stack([
        np.hstack([fp, z0a]), np.hstack([nxt, z0a]), np.hstack([nxt, z1a]), np.hstack([fp, z1a])
    ], axis=1)  # fmt: skip
    d = nxt - fp
    length = np.linalg.norm(d, axis=1)
    normals = np.stack([d[:, 1], -d[:, 0], np.zeros(k)], axis=1) / length[:, None]
    uv = np.stack([
        np.stack([np.zeros(k), np.full(k, z0)], 1), np.stack([length, np.full(k, z0)], 1),
        np.stack([length, np.full(k, z1)], 1), np.stack([np.zeros(k), np.full(k, z1)], 1),
    ], axis=1)  # fmt: skip
    parts = [quads(corners, normals, color, color2=color2, uv=uv, params=wall_params)]
    fan = np.stack([np.zeros(k - 2, int), np.arange(1, k - 1), np.arange(2, k)], axis=1)
    top = np.hstack([fp, np.full((k, 1), z1)])[fan]
    parts.append(triangles(top, [0, 0, 1], color if top_color is None else top_color,
                           params=top_params))  # fmt: skip
    if bottom:
        bot = np.hstack([fp, np.full((k, 1), z0)])[fan]
        parts.append(triangles(bot, [0, 0, -1], color))
    return np.concatenate(parts)


def box(
    center: np.ndarray, size: np.ndarray, color: np.ndarray, yaw: float = 0.0, **kw
) -> np.ndarray:
    """An axis-aligned (in its own yaw) box; ``center`` is the bottom centre ``(3,)``.

    Args:
        center: Bottom-centre point ``(3,)``.
        size: ``(length along yaw, width, height)``.
        color: RGB ``(3,)``.
        yaw: Rotation about z, radians, counter-clockwise from +x.
        **kw: Passed to :func:`prism`.

    Returns:
        Vertex rows ``(36, VERTEX_FLOATS)`` (30 without bottom).
    """
    lx, ly = size[0] / 2, size[1] / 2
    local = np.array([[-lx, -ly], [lx, -ly], [lx, ly], [-lx, ly]])
    c, s = np.cos(yaw), np.sin(yaw)
    fp = local @ np.array([[c, s], [-s, c]]) + np.asarray(center[:2])
    return prism(fp, center[2], center[2] + size[2], color, **kw)


def icosphere(radius: float, color: np.ndarray, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A 20-face icosahedron with flat normals."""
    g = (1 + 5**0.5) / 2
    v = np.array([
        [-1, g, 0], [1, g, 0], [-1, -g, 0], [1, -g, 0], [0, -1, g], [0, 1, g],
        [0, -1, -g], [0, 1, -g], [g, 0, -1], [g, 0, 1], [-g, 0, -1], [-g, 0, 1],
    ], dtype=np.float64)  # fmt: skip
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    f = np.array([
        [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
        [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
        [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1],
    ])  # fmt: skip
    tri = v[f] * radius + np.asarray(center)
    n = v[f].mean(axis=1)
    return triangles(tri, n / np.linalg.norm(n, axis=1, keepdims=True), color)


def instantiate(
    template: np.ndarray,
    xy: np.ndarray,
    z: np.ndarray | float,
    yaw: np.ndarray,
    scale: np.ndarray | None = None,
    color: np.ndarray | None = None,
    color_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Copy a template mesh to many places (static geometry, baked once).

    Args:
        template: Vertex rows ``(V, VERTEX_FLOATS)`` in a local frame.
        xy: Positions ``(N, 2)``.
        z: Heights ``(N,)`` or scalar.
        yaw: ENU yaw ``(N,)`` radians.
        scale: Per-instance scale ``(N, 3)``; ones if None.
        color: Per-instance RGB ``(N, 3)`` replacing the colour of vertices in ``color_mask``.
        color_mask: Boolean ``(V,)`` selecting recoloured vertices.

    Returns:
        Vertex rows ``(N V, VERTEX_FLOATS)`` float32.
    """
    n = len(xy)
    out = np.repeat(template[None], n, axis=0).astype(np.float32)
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.zeros((n, 3, 3))
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1
    sc = np.ones((n, 3)) if scale is None else np.asarray(scale)
    pos = template[None, :, 0:3] * sc[:, None, :]
    out[:, :, 0:3] = (
        np.einsum("nij,nvj->nvi", rot, pos)
        + np.concatenate(
            [xy, np.broadcast_to(np.asarray(z, dtype=np.float64).reshape(-1, 1), (n, 1))], axis=1
        )[:, None, :]
    )
    nrm = np.einsum("nij,nvj->nvi", rot, template[None, :, 3:6] / sc[:, None, :])
    out[:, :, 3:6] = nrm / np.linalg.norm(nrm, axis=2, keepdims=True)
    if color is not None:
        out[:, color_mask, 6:9] = np.asarray(color)[:, None, :]
    return out.reshape(-1, VERTEX_FLOATS)


# --- town elements --------------------------------------------------------------------------
_ASPHALT = np.array([0.23, 0.23, 0.24])
_CURB = np.array([0.62, 0.61, 0.58])
_PAVING = np.array([0.60, 0.56, 0.52])
_LOT = np.array([0.42, 0.41, 0.38])
_POLE = np.array([0.30, 0.31, 0.32])
_TRUNK = np.array([0.30, 0.22, 0.15])


def road_mesh(layout: TownLayout) -> np.ndarray:
    """Road surfaces at ``z = 0``: one quad per segment, extended through its junctions.

    Segments overlap inside junctions; there the shader draws plain asphalt on both (no markings
    within the clearances), so the coplanar overlap is invisible.
    """
    rows = []
    for seg in layout.segments:
        d = np.append(seg.direction, 0.0)
        r = np.array([d[1], -d[0], 0.0])
        hw = seg.half_width
        # reach just across the crossing road (its half width is clearance - JUNCTION_MARGIN)
        ext0 = 0.0 if seg.start_node < 0 else seg.clear_start - JUNCTION_MARGIN + 0.5
        ext1 = 0.0 if seg.end_node < 0 else seg.clear_end - JUNCTION_MARGIN + 0.5
        a = np.append(seg.start, 0.0) - d * ext0
        b = np.append(seg.end, 0.0) + d * ext1
        corners = np.stack([a - r * hw, a + r * hw, b + r * hw, b - r * hw])[None]
        length = seg.length
        uv = np.array([[[-ext0, -hw], [-ext0, hw], [length + ext1, hw], [length + ext1, -hw]]])
        rows.append(quads(
            corners, [0, 0, 1], _ASPHALT, color2=[seg.clear_start, seg.clear_end, 0.0], uv=uv,
            params=[Material.ROAD, seg.lanes_per_direction, length, 0.0],
        ))  # fmt: skip
    return np.concatenate(rows)


def block_mesh(layout: TownLayout) -> np.ndarray:
    """Sidewalk rings (curb to lot), curb faces and the lot surface of every block."""
    rows = []
    for block in layout.blocks:
        curb, lot = block.curb, block.lot
        h = CURB_HEIGHT
        rows.append(
            prism(curb, 0.0, h, _CURB, top_params=[Material.PAVING, 0, 0, 0], top_color=_PAVING)[
                :24
            ]
        )  # walls only; the ring is drawn below
        for k in range(4):
            k1 = (k + 1) % 4
            ring = np.array([[*curb[k], h], [*curb[k1], h], [*lot[k1], h], [*lot[k], h]])
            rows.append(quads(ring[None], [0, 0, 1], _PAVING, params=[Material.PAVING, 0, 0, 0]))
        fan = np.array([[0, 1, 2], [0, 2, 3]])
        top = np.hstack([lot, np.full((4, 1), h)])[fan]
        rows.append(triangles(top, [0, 0, 1], _LOT, params=[Material.GROUND, 0, 0, 0]))
    return np.concatenate(rows)


def ground_mesh(layout: TownLayout, radius: float = 1500.0) -> np.ndarray:
    """Grass to the horizon around the town, and an asphalt underlay below the road grid.

    The grass (``z = -0.02``) is a frame around the road grid's hull so it never overlaps the roads
    coplanarly; the underlay (``z = -0.05``, asphalt) fills any sliver between road quads at skewed
    junctions.
    """
    nodes = layout.nodes
    hull = np.array([nodes[0, 0], nodes[-1, 0], nodes[-1, -1], nodes[0, -1]])
    hull = inset_polygon(hull, np.full(4, -12.0))  # grown outwards past the border roads
    big = np.array([[-radius, -radius], [radius, -radius], [radius, radius], [-radius, radius]])
    z = -0.02
    frame = np.array([
        [[*big[k], z], [*big[(k + 1) % 4], z], [*hull[(k + 1) % 4], z], [*hull[k], z]]
        for k in range(4)
    ])  # fmt: skip
    under = np.hstack([hull, np.full((4, 1), -0.05)])[None]
    return np.concatenate([
        quads(frame, [0, 0, 1], [0.36, 0.40, 0.26], params=[Material.GROUND, 0, 0, 0]),
        quads(under, [0, 0, 1], _ASPHALT * 0.9),
    ])  # fmt: skip


def building_mesh(b: Building) -> np.ndarray:
    """Walls with procedural windows, roof, optional tier, roof box, shop sign."""
    params = _facade_params(b, b.footprint)
    accent = b.accent if b.storefront else b.color * 0.8
    parts = [prism(b.footprint, 0.0, b.height, b.color, top_color=b.roof_color,
                   wall_params=params, color2=accent)]  # fmt: skip
    top = b.height
    if b.tier_height > b.height:
        tier_fp = _shrink(b.footprint, b.tier_inset)
        if tier_fp is not None:
            parts.append(prism(tier_fp, b.height, b.tier_height, b.color, top_color=b.roof_color,
                               wall_params=_facade_params(b, tier_fp, shop=False),
                               color2=b.color * 0.8))  # fmt: skip
            top = b.tier_height
    edge = b.footprint[1] - b.footprint[0]
    yaw = float(np.arctan2(edge[1], edge[0]))
    unit = _shrink(b.footprint, 0.45 * _min_side(b.footprint))
    if unit is not None and (b.seed % 3) == 0:  # rooftop machinery
        fp = unit if b.tier_height <= b.height else _shrink(unit, b.tier_inset)
        if fp is not None:
            parts.append(prism(fp, top, top + 2.0, np.array([0.55, 0.55, 0.56])))
    if b.sign and b.storefront:
        parts.append(_sign(b, yaw))
    return np.concatenate(parts)


def _facade_params(b: Building, footprint: np.ndarray, shop: bool = True) -> np.ndarray:
    """Per-wall facade params ``(K, 4)``; the window pitch is fitted so whole windows fill walls."""
    length = np.linalg.norm(np.roll(footprint, -1, axis=0) - footprint, axis=1)
    pitch = length / np.maximum(np.round(length / b.window_spacing), 1.0)
    code = 2 * b.seed + int(b.storefront and shop)
    k = len(footprint)
    return np.stack([np.full(k, Material.FACADE), pitch, np.full(k, b.floor_height),
                     np.full(k, code)], axis=1)  # fmt: skip


def _min_side(fp: np.ndarray) -> float:
    return float(np.min(np.linalg.norm(np.roll(fp, -1, axis=0) - fp, axis=1)))


def _shrink(fp: np.ndarray, inset: float) -> np.ndarray | None:
    """Inset a footprint; None if it would vanish."""
    if _min_side(fp) <= 2 * inset + 2.0:
        return None
    return inset_polygon(fp, np.full(len(fp), inset))


def _sign(b: Building, yaw: float) -> np.ndarray:
    """A lit sign board over the shop front on the building's first (street-facing) wall."""
    p0, p1 = b.footprint[0], b.footprint[1]
    length = float(np.linalg.norm(p1 - p0))
    d = (p1 - p0) / length
    out = np.array([d[1], -d[0]])  # right of a counter-clockwise edge: outside
    rng = np.random.default_rng(b.seed)
    w = min(length * rng.uniform(0.4, 0.8), 12.0)
    mid = p0 + d * length * rng.uniform(0.35, 0.65) + out * 0.2
    z = b.floor_height * 0.85 + CURB_HEIGHT
    color = np.array([[0.9, 0.9, 0.85], [0.95, 0.8, 0.2], [0.2, 0.5, 0.9], [0.9, 0.2, 0.2]])[
        rng.integers(4)
    ]
    return box(np.array([*mid, z]), np.array([w, 0.4, 0.9]), color, yaw=yaw,
               wall_params=[Material.EMISSIVE, 0, 0, 0], color2=color * 0.9)  # fmt: skip


def tree_template() -> np.ndarray:
    """Unit tree: a 1 m trunk (scaled per tree) and a tinted crown of radius 1."""
    trunk = box(np.zeros(3), np.array([0.3, 0.3, 1.0]), _TRUNK)
    crown = np.concatenate([
        icosphere(1.0, [0.2, 0.4, 0.1], center=(0.0, 0.0, 1.6)),
        icosphere(0.75, [0.2, 0.4, 0.1], center=(0.35, 0.2, 2.2)),
    ])  # fmt: skip
    return np.concatenate([trunk, crown])


def trees_mesh(layout: TownLayout) -> np.ndarray:
    """All trees, baked into one array."""
    f = layout.furniture
    if len(f.tree_xy) == 0:
        return np.zeros((0, VERTEX_FLOATS), np.float32)
    tpl = tree_template()
    n_trunk = 30
    # trunk stretches with the trunk height; the crown sits on top, scaled by its radius
    trunk = instantiate(
        tpl[:n_trunk],
        f.tree_xy,
        CURB_HEIGHT,
        np.zeros(len(f.tree_xy)),
        scale=np.stack([np.ones(len(f.tree_xy))] * 2 + [f.tree_size[:, 0]], 1),
    )
    crown_tpl = tpl[n_trunk:].copy()
    crown_tpl[:, 2] -= 1.6
    r = f.tree_size[:, 1]
    yaw = np.arange(len(r)) * 2.39996
    crown = instantiate(crown_tpl, f.tree_xy, CURB_HEIGHT + f.tree_size[:, 0] + 0.7 * r, yaw,
                        scale=np.stack([r, r, r * 1.1], 1), color=f.tree_color,
                        color_mask=np.ones(len(crown_tpl), bool))  # fmt: skip
    return np.concatenate([trunk, crown])


def lamp_template(height: float) -> np.ndarray:
    """Street lamp: pole, arm towards +x, lamp head glowing downward."""
    return np.concatenate([
        box(np.zeros(3), np.array([0.18, 0.18, height]), _POLE),
        box(np.array([0.9, 0.0, height - 0.1]), np.array([1.9, 0.1, 0.1]), _POLE),
        box(np.array([1.7, 0.0, height - 0.3]), np.array([0.6, 0.3, 0.2]), _POLE,
            wall_params=[Material.EMISSIVE, 0, 0, 0], color2=[1.0, 0.85, 0.6]),
    ])  # fmt: skip


def signal_mesh(arm: float) -> np.ndarray:
    """Traffic light in its local frame: the head faces +x (oncoming traffic).

    The pole stands on the right of the approaching lanes, so the road lies to the pole's local -y
    (the left of the approaching driver); the arm reaches ``arm`` metres that way and carries the
    head with three lenses. The red lens is lit: signal state is part of the static town.
    """
    h = SIGNAL_HEIGHT
    parts = [
        box(np.zeros(3), np.array([0.22, 0.22, h + 0.4]), _POLE),
        box(np.array([0.0, -arm / 2, h]), np.array([0.12, arm, 0.12]), _POLE),
        box(np.array([0.0, -arm, h - 0.55]), np.array([0.35, 0.4, 1.2]),
            np.array([0.12, 0.12, 0.12])),
    ]  # fmt: skip
    colors = np.array([[0.9, 0.1, 0.05], [0.95, 0.7, 0.05], [0.1, 0.85, 0.3]])
    for i, c in enumerate(colors):
        dim = c * (0.9 if i == 0 else 0.25)
        parts.append(box(np.array([0.19, -arm, h + 0.25 - 0.38 * i]),
                         np.array([0.04, 0.26, 0.26]), dim,
                         wall_params=[Material.EMISSIVE, 0, 0, 0], color2=dim))  # fmt: skip
    return np.concatenate(parts)


def furniture_mesh(layout: TownLayout) -> np.ndarray:
    """Trees, lamps and traffic lights baked into one array."""
    f = layout.furniture
    parts = [trees_mesh(layout)]
    if len(f.lamp_xy):
        parts.append(instantiate(lamp_template(7.5), f.lamp_xy, CURB_HEIGHT, f.lamp_yaw))
    for xy, yaw, arm in zip(f.signal_xy, f.signal_yaw, f.signal_arm, strict=True):
        parts.append(instantiate(signal_mesh(float(arm)), xy[None], CURB_HEIGHT, np.array([yaw])))
    return np.concatenate(parts)


def static_mesh(layout: TownLayout) -> np.ndarray:
    """The whole static town, shape ``(N, VERTEX_FLOATS)`` float32, one draw call."""
    parts = [ground_mesh(layout), road_mesh(layout), block_mesh(layout), furniture_mesh(layout)]
    parts += [building_mesh(b) for b in layout.buildings]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


# --- actors ---------------------------------------------------------------------------------
TINT_NONE, TINT_A, TINT_B = 0.0, 1.0, 2.0
"""Actor vertices take their colour from the template (0) or the instance's colour A / B."""


def _tinted(rows: np.ndarray, tint: float) -> np.ndarray:
    rows = rows.copy()
    rows[:, 15] = tint
    return rows


def _panel(center, size_yz, color, normal_x: float, color2) -> np.ndarray:
    """A light: one quad facing +x (``normal_x = 1``) or -x, at ``center`` ``(3,)``."""
    x, y, z = center
    h, w = size_yz[1] / 2, size_yz[0] / 2
    c = np.array([[x, y - w, z - h], [x, y + w, z - h], [x, y + w, z + h], [x, y - w, z + h]])
    return quads(c[None], [normal_x, 0, 0], color, color2=color2,
                 params=[Material.EMISSIVE, 0, 0, 0])  # fmt: skip


def vehicle_template(length: float, width: float, height: float, bus: bool = False) -> np.ndarray:
    """A vehicle in its local frame (x forward, y left, z up, origin at the ground centre).

    Body panels take instance colour A; the rest is fixed (glass, tyres, lights). About 40
    triangles: actors are many, and vertex work dominates on a software rasteriser.
    """
    clearance = 0.3
    body_h = height * (0.45 if not bus else 0.85)
    parts = [_tinted(box(np.array([0.0, 0.0, clearance]), np.array([length, width, body_h]),
                         np.ones(3)), TINT_A)]  # fmt: skip
    if bus:
        glass = box(np.array([0.0, 0.0, clearance + body_h * 0.45]),
                    np.array([length + 0.02, width + 0.02, body_h * 0.35]), [0.1, 0.12, 0.14],
                    wall_params=[Material.GLASS, 0, 0, 0])  # fmt: skip
        parts.append(_tinted(glass, TINT_NONE)[:24])
    else:
        cab_l = length * 0.5
        cab = box(np.array([-0.05 * length, 0.0, clearance + body_h]),
                  np.array([cab_l, width * 0.86, height - clearance - body_h]),
                  [0.1, 0.12, 0.14], wall_params=[Material.GLASS, 0, 0, 0])  # fmt: skip
        parts += [_tinted(cab[:24], TINT_NONE), _tinted(cab[24:], TINT_A)]
    for sx in (-0.32, 0.32):  # one tyre box per axle, walls only (the top is inside the body)
        parts.append(box(np.array([sx * length, 0.0, 0.0]), np.array([0.65, width - 0.05, 0.6]),
                         [0.05, 0.05, 0.05])[:24])  # fmt: skip
    z = clearance + body_h * 0.55
    for sy in (-0.35, 0.35):
        parts.append(_panel([length / 2 + 0.01, sy * width, z], [0.3, 0.15], [0.9, 0.9, 0.8],
                            1.0, [1.0, 1.0, 0.9]))  # fmt: skip
        parts.append(_panel([-length / 2 - 0.01, sy * width, z], [0.3, 0.15], [0.7, 0.05, 0.05],
                            -1.0, [0.8, 0.0, 0.0]))  # fmt: skip
    return np.concatenate(parts)


def pedestrian_template() -> np.ndarray:
    """A 1.75 m person (30 triangles): legs colour B, torso colour A, skin head."""
    skin = np.array([0.85, 0.68, 0.55])
    return np.concatenate([
        _tinted(box(np.array([0.0, 0.0, 0.0]), np.array([0.18, 0.34, 0.85]), np.ones(3)), TINT_B),
        _tinted(box(np.array([0.0, 0.0, 0.85]), np.array([0.24, 0.48, 0.58]), np.ones(3)), TINT_A),
        box(np.array([0.0, 0.0, 1.43]), np.array([0.21, 0.19, 0.3]), skin),
    ])  # fmt: skip


ACTOR_KINDS = ("car", "van", "bus", "pedestrian")
"""Actor template names, in draw order; :func:`actor_templates` returns them in this order."""


def actor_templates() -> dict[str, np.ndarray]:
    """Template meshes of every actor kind, local frame, ``(V, VERTEX_FLOATS)`` float32 each."""
    return {
        "car": vehicle_template(4.5, 1.8, 1.45),
        "van": vehicle_template(4.9, 1.95, 1.95),
        "bus": vehicle_template(11.0, 2.5, 3.2, bus=True),
        "pedestrian": pedestrian_template(),
    }
