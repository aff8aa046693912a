"""The seeded street layout of the procedural town: pure numpy, no rendering.

The town is a grid of roads whose nodes are jittered, so blocks are irregular quadrilaterals and
roads bend slightly at intersections. Everything lives in the city's ENU frame (x east, y north,
z up, metres); the road surface is the plane ``z = 0`` and sidewalks are curbs of height
:data:`CURB_HEIGHT`. Korea drives on the right, so lanes are offset to the right of their direction
of travel.

Glossary:
    node: a grid point ``(i, j)``; every node is an intersection.
    segment: the straight road between two neighbouring nodes, or a stub leaving the town.
    curb polygon: a block's outline where the sidewalk starts (road edges inset from the nodes).
    lot polygon: the curb polygon inset by the sidewalk width; buildings stand on it.
    loop: a closed polyline actors move along (vehicles: one lane out and back with U-turns;
        pedestrians: around a block's sidewalk).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cityenv.errors import ConfigError

CURB_HEIGHT = 0.15
"""Height of sidewalks and lots above the road surface, metres."""

LANE_WIDTH = 3.25
"""Width of one traffic lane, metres."""

STUB_LENGTH = 45.0
"""Length of the roads that leave the town at its border (vehicles U-turn at their ends), metres."""

JUNCTION_MARGIN = 6.0
"""Distance from a crossing road's edge to the stop line (the crosswalk lies in between), metres."""

WAYPOINT_SPACING = 2.0
"""Distance between consecutive lane waypoints, metres."""


# --- value types ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Lane:
    """One traffic lane of one road segment, in travel order.

    Attributes:
        id: Index of the lane in :attr:`RoadNetwork.lanes`.
        segment: Index of its road segment in :attr:`TownLayout.segments`.
        direction: ``+1`` if it runs from the segment's start node to its end node, else ``-1``.
        index: Lane number counted from the centre line (0 = next to it).
        width: Lane width in metres.
        waypoints: Centre-line points in ENU, shape ``(N, 3)`` float64, ``z = 0`` (road surface),
            spaced about :data:`WAYPOINT_SPACING` apart, from one intersection's edge to the next.
        entry: Intersection id the lane comes from, or ``-1`` (the town's border).
        exit: Intersection id the lane leads into, or ``-1`` (the town's border).
    """

    id: int
    segment: int
    direction: int
    index: int
    width: float
    waypoints: np.ndarray
    entry: int
    exit: int


@dataclass(frozen=True)
class Intersection:
    """A road junction (one grid node).

    Attributes:
        id: Index in :attr:`RoadNetwork.intersections`.
        node: Grid index ``(i, j)``.
        center: Centre in ENU, shape ``(3,)``, ``z = 0``.
        incoming: Ids of the lanes that end here.
        outgoing: Ids of the lanes that start here.
    """

    id: int
    node: tuple[int, int]
    center: np.ndarray
    incoming: tuple[int, ...]
    outgoing: tuple[int, ...]


@dataclass(frozen=True)
class Segment:
    """A straight road between two points.

    Attributes:
        start: Start point in ENU xy, shape ``(2,)``.
        end: End point in ENU xy, shape ``(2,)``.
        lanes_per_direction: Number of lanes each way.
        sidewalk: Sidewalk width on both sides, metres.
        clear_start: Distance from ``start`` kept free of markings (the junction), metres.
        clear_end: Same for ``end``.
        start_node: Intersection id at ``start`` or ``-1``.
        end_node: Intersection id at ``end`` or ``-1``.
    """

    start: np.ndarray
    end: np.ndarray
    lanes_per_direction: int
    sidewalk: float
    clear_start: float
    clear_end: float
    start_node: int
    end_node: int

    @property
    def half_width(self) -> float:
        """Half the width of the carriageway (curb to centre line), metres."""
        return self.lanes_per_direction * LANE_WIDTH

    @property
    def length(self) -> float:
        """Length in metres."""
        return float(np.linalg.norm(self.end - self.start))

    @property
    def direction(self) -> np.ndarray:
        """Unit vector from start to end, shape ``(2,)``."""
        return (self.end - self.start) / self.length


@dataclass(frozen=True)
class Building:
    """An extruded building with an optional set-back upper tier.

    Attributes:
        footprint: Ground outline in ENU xy, counter-clockwise, shape ``(4, 2)``.
        height: Roof height of the base above the road surface, metres.
        tier_height: Roof height of the upper tier (0 = none), metres.
        tier_inset: Inset of the tier from the base outline, metres.
        color: Facade colour, RGB in [0, 1], shape ``(3,)``.
        accent: Storefront / trim colour, RGB in [0, 1], shape ``(3,)``.
        roof_color: RGB in [0, 1], shape ``(3,)``.
        window_spacing: Nominal horizontal window pitch, metres.
        floor_height: Storey height, metres.
        storefront: Whether the ground floor is a shop front.
        sign: Whether a shop sign hangs above the ground floor.
        seed: Per-building integer for window variation.
    """

    footprint: np.ndarray
    height: float
    tier_height: float
    tier_inset: float
    color: np.ndarray
    accent: np.ndarray
    roof_color: np.ndarray
    window_spacing: float
    floor_height: float
    storefront: bool
    sign: bool
    seed: int


@dataclass(frozen=True)
class Block:
    """A city block.

    Attributes:
        corners: Node positions around the block, counter-clockwise, shape ``(4, 2)``.
        curb: Curb polygon (sidewalk outer edge), shape ``(4, 2)``.
        lot: Lot polygon (sidewalk inner edge), shape ``(4, 2)``.
        sidewalks: Sidewalk width along each curb edge ``k`` (from corner k to k+1), shape ``(4,)``.
    """

    corners: np.ndarray
    curb: np.ndarray
    lot: np.ndarray
    sidewalks: np.ndarray


@dataclass(frozen=True)
class StreetFurniture:
    """Trees, street lamps and traffic lights, as arrays (one row per object).

    Attributes:
        tree_xy: Tree positions, shape ``(T, 2)``; they stand on the sidewalk at ``CURB_HEIGHT``.
        tree_size: ``(trunk height, crown radius)`` per tree, shape ``(T, 2)``.
        tree_color: Crown colour, shape ``(T, 3)``.
        lamp_xy: Street-lamp positions, shape ``(L, 2)``.
        lamp_yaw: ENU yaw of each lamp's arm (towards the road), radians, shape ``(L,)``.
        lamp_height: Pole height, metres, shape ``(L,)``.
        signal_xy: Traffic-light pole positions, shape ``(S, 2)``.
        signal_yaw: ENU yaw the signal head faces (towards oncoming traffic), shape ``(S,)``.
        signal_arm: Length of the arm reaching over the road, metres, shape ``(S,)``.
    """

    tree_xy: np.ndarray
    tree_size: np.ndarray
    tree_color: np.ndarray
    lamp_xy: np.ndarray
    lamp_yaw: np.ndarray
    lamp_height: np.ndarray
    signal_xy: np.ndarray
    signal_yaw: np.ndarray
    signal_arm: np.ndarray


SIGNAL_HEIGHT = 5.5
"""Height of traffic-light arms above the road, metres."""


@dataclass(frozen=True)
class TownLayout:
    """Everything static about a town except its meshes.

    Attributes:
        seed: The seed it was generated from.
        nodes: Node positions, shape ``(nx + 1, ny + 1, 2)`` ENU xy.
        segments: Road segments (grid edges, then border stubs).
        blocks: City blocks.
        buildings: Buildings.
        furniture: Trees, lamps and traffic lights.
        lanes: Traffic lanes (per segment, per direction, per lane).
        intersections: One per node.
        vehicle_loops: Closed polylines vehicles drive along, each shape ``(N, 2)`` (first point
            not repeated).
        pedestrian_loops: Closed polylines pedestrians walk along, each shape ``(N, 2)``.
        bounds: ``(xmin, ymin, xmax, ymax)`` of the road network including stubs.
    """

    seed: int
    nodes: np.ndarray
    segments: list[Segment]
    blocks: list[Block]
    buildings: list[Building]
    furniture: StreetFurniture
    lanes: list[Lane]
    intersections: list[Intersection]
    vehicle_loops: list[np.ndarray] = field(repr=False)
    pedestrian_loops: list[np.ndarray] = field(repr=False)
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


# --- small planar geometry ------------------------------------------------------------------
def _perp_right(d: np.ndarray) -> np.ndarray:
    """The right-hand normal of direction(s) ``d`` (..., 2) in the ENU plane (x east, y north)."""
    return np.stack([d[..., 1], -d[..., 0]], axis=-1)


def _line_intersection(
    p0: np.ndarray, d0: np.ndarray, p1: np.ndarray, d1: np.ndarray
) -> np.ndarray:
    """Intersection of lines ``p0 + s d0`` and ``p1 + t d1`` in 2-D (they must not be parallel)."""
    a = np.array([[d0[0], -d1[0]], [d0[1], -d1[1]]])
    s = np.linalg.solve(a, p1 - p0)[0]
    return p0 + s * d0


def inset_polygon(poly: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Move each edge of a convex counter-clockwise polygon inwards.

    Args:
        poly: Vertices, counter-clockwise, shape ``(K, 2)``.
        distances: Inset of edge ``k`` (from vertex k to k+1), metres, shape ``(K,)``.

    Returns:
        The inset polygon, shape ``(K, 2)``; vertex k is where edges k-1 and k meet.
    """
    k = len(poly)
    d = np.roll(poly, -1, axis=0) - poly
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    inward = -_perp_right(d)  # left of a counter-clockwise edge is inside
    p = poly + inward * np.asarray(distances, dtype=np.float64)[:, None]
    return np.array([_line_intersection(p[i - 1], d[i - 1], p[i], d[i]) for i in range(k)])


def polygon_contains(poly: np.ndarray, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Whether points lie inside a convex counter-clockwise polygon.

    Args:
        poly: Vertices, counter-clockwise, shape ``(K, 2)``.
        points: Query points, shape ``(..., 2)``.
        margin: Points must be at least this far inside every edge (negative = tolerance).

    Returns:
        Boolean array, shape ``(...)``.
    """
    d = np.roll(poly, -1, axis=0) - poly
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    rel = points[..., None, :] - poly  # (..., K, 2)
    cross = d[:, 0] * rel[..., 1] - d[:, 1] * rel[..., 0]
    return np.all(cross >= margin, axis=-1)


def resample_polyline(points: np.ndarray, spacing: float) -> np.ndarray:
    """Points along an open polyline about ``spacing`` apart, keeping both ends.

    Args:
        points: Polyline vertices, shape ``(N, D)``.
        spacing: Target distance between output points.

    Returns:
        Shape ``(M, D)``, ``M >= 2``.
    """
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(np.ceil(cum[-1] / spacing)), 1)
    s = np.linspace(0.0, cum[-1], n + 1)
    return np.stack([np.interp(s, cum, points[:, c]) for c in range(points.shape[1])], axis=1)


# --- generation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LayoutParams:
    """Knobs of :func:`generate_layout`.

    Attributes:
        blocks: Number of blocks ``(east-west, north-south)``.
        block_size: Range of block pitch (node to node), metres.
        jitter: Largest random displacement of a node, metres.
    """

    blocks: tuple[int, int] = (4, 4)
    block_size: tuple[float, float] = (60.0, 110.0)
    jitter: float = 4.0

    def __post_init__(self) -> None:
        blocks = tuple(self.blocks) if isinstance(self.blocks, (tuple, list)) else None
        if (
            blocks is None
            or len(blocks) != 2
            or not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in blocks)
            or min(blocks) < 1
        ):
            raise ConfigError(
                f"town blocks must be a pair (east-west, north-south) of whole numbers >= 1, got "
                f"{self.blocks!r}; a town needs at least one block, e.g. blocks=(1, 1)."
            )


def generate_layout(seed: int, params: LayoutParams | None = None) -> TownLayout:
    """Generate the town layout for a seed.

    Args:
        seed: Any non-negative integer; the same seed gives the same layout.
        params: Size knobs; defaults to :class:`LayoutParams`.

    Returns:
        The layout, in the town's ENU frame (its centre near the origin).
    """
    params = params or LayoutParams()
    rng = np.random.default_rng([seed, 0x70E1])
    nx, ny = params.blocks
    nodes, line_lanes, line_walk = _grid(rng, nx, ny, params)
    segments = _segments(nodes, line_lanes, line_walk)
    blocks = [_block(nodes, line_lanes, line_walk, i, j) for i in range(nx) for j in range(ny)]
    blocks += _outer_blocks(nodes, line_lanes, line_walk)
    buildings = [b for block in blocks for b in _buildings(rng, block)]
    furniture = _furniture(rng, blocks, segments)
    lanes, intersections = _lanes(segments, nodes)
    vehicle_loops = _vehicle_loops(nodes, line_lanes)
    pedestrian_loops = _pedestrian_loops(blocks)
    pts = np.concatenate([np.stack([s.start, s.end]) for s in segments])
    bounds = (*pts.min(axis=0).tolist(), *pts.max(axis=0).tolist())
    return TownLayout(
        seed, nodes, segments, blocks, buildings, furniture, lanes, intersections,
        vehicle_loops, pedestrian_loops, bounds,
    )  # fmt: skip


def _grid(
    rng: np.random.Generator, nx: int, ny: int, params: LayoutParams
) -> tuple[np.ndarray, dict, dict]:
    """Jittered node positions and per-line lane counts / sidewalk widths.

    Lines are keyed ``("x", i)`` (the north-south road through nodes ``(i, *)``) and ``("y", j)``.
    """
    lo, hi = params.block_size
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(lo, hi, nx))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(lo, hi, ny))])
    xs -= xs.mean()
    ys -= ys.mean()
    nodes = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1)
    nodes += rng.uniform(-params.jitter, params.jitter, nodes.shape)
    lanes, walk = {}, {}
    for axis, n in (("x", nx + 1), ("y", ny + 1)):
        for i in range(n):
            lanes[(axis, i)] = int(rng.choice([1, 1, 2, 2, 3], p=[0.3, 0.2, 0.2, 0.2, 0.1]))
            walk[(axis, i)] = float(rng.uniform(2.5, 3.5) + 0.5 * lanes[(axis, i)])
    return nodes, lanes, walk


def _node_id(nodes: np.ndarray, i: int, j: int) -> int:
    return i * nodes.shape[1] + j


def _segments(nodes: np.ndarray, line_lanes: dict, line_walk: dict) -> list[Segment]:
    """Grid edges then border stubs, with junction clearances from the crossing roads."""
    nxp, nyp = nodes.shape[:2]

    def clear(crossing: tuple) -> float:
        return line_lanes[crossing] * LANE_WIDTH + JUNCTION_MARGIN

    segs = []
    for i in range(nxp):  # north-south roads
        line = ("x", i)
        for j in range(nyp - 1):
            segs.append(Segment(
                nodes[i, j], nodes[i, j + 1], line_lanes[line], line_walk[line],
                clear(("y", j)), clear(("y", j + 1)),
                _node_id(nodes, i, j), _node_id(nodes, i, j + 1),
            ))  # fmt: skip
    for j in range(nyp):  # east-west roads
        line = ("y", j)
        for i in range(nxp - 1):
            segs.append(Segment(
                nodes[i, j], nodes[i + 1, j], line_lanes[line], line_walk[line],
                clear(("x", i)), clear(("x", i + 1)),
                _node_id(nodes, i, j), _node_id(nodes, i + 1, j),
            ))  # fmt: skip
    for line, path in _lines(nodes):
        for end in (0, -1):
            node_xy = path[end]
            inner = path[1] if end == 0 else path[-2]
            out = (node_xy - inner) / np.linalg.norm(node_xy - inner)
            ij = _line_node(nodes, line, end)
            crossing = ("y", ij[1]) if line[0] == "x" else ("x", ij[0])
            segs.append(Segment(
                node_xy, node_xy + STUB_LENGTH * out, line_lanes[line], line_walk[line],
                clear(crossing), 0.0, _node_id(nodes, *ij), -1,
            ))  # fmt: skip
    return segs


def _lines(nodes: np.ndarray) -> list[tuple[tuple, np.ndarray]]:
    """Every grid line as ``(key, node positions in order)`` (south->north or west->east)."""
    nxp, nyp = nodes.shape[:2]
    return [(("x", i), nodes[i, :]) for i in range(nxp)] + [
        (("y", j), nodes[:, j]) for j in range(nyp)
    ]


def _line_node(nodes: np.ndarray, line: tuple, end: int) -> tuple[int, int]:
    """Grid index of the first (``end=0``) or last (``end=-1``) node on a line."""
    nxp, nyp = nodes.shape[:2]
    k = 0 if end == 0 else (nyp - 1 if line[0] == "x" else nxp - 1)
    return (line[1], k) if line[0] == "x" else (k, line[1])


def _block(nodes: np.ndarray, line_lanes: dict, line_walk: dict, i: int, j: int) -> Block:
    """Block ``(i, j)``: corners SW, SE, NE, NW (counter-clockwise)."""
    corners = np.stack([nodes[i, j], nodes[i + 1, j], nodes[i + 1, j + 1], nodes[i, j + 1]])
    edge_lines = [("y", j), ("x", i + 1), ("y", j + 1), ("x", i)]
    return _make_block(corners, edge_lines, line_lanes, line_walk)


def _stub_end(nodes: np.ndarray, line: tuple, end: int) -> np.ndarray:
    """Far end of the stub leaving a line at its first (``end=0``) or last (``end=-1``) node."""
    path = dict(_lines(nodes))[line]
    a, b = (path[0], path[1]) if end == 0 else (path[-1], path[-2])
    return a + STUB_LENGTH * (a - b) / np.linalg.norm(a - b)


def _outer_blocks(nodes: np.ndarray, line_lanes: dict, line_walk: dict) -> list[Block]:
    """The ring of blocks outside the border roads, between neighbouring stubs.

    Their outer edge has no road (inset 0), so the town seen from inside has buildings all round.
    """
    nxp, nyp = nodes.shape[:2]
    lanes = {**line_lanes, None: 0}
    walk = {**line_walk, None: 0.0}
    out = []
    # (border line, crossing-line axis, count, end of the crossing lines, CCW order flips)
    for k in range(nxp - 1):  # south and north
        for border_j, end in ((0, 0), (nyp - 1, -1)):
            a, b = nodes[k, border_j], nodes[k + 1, border_j]
            sa, sb = _stub_end(nodes, ("x", k), end), _stub_end(nodes, ("x", k + 1), end)
            if end == 0:  # south: stub_a, stub_b, b, a
                corners, keys = [sa, sb, b, a], [None, ("x", k + 1), ("y", 0), ("x", k)]
            else:  # north: a, b, stub_b, stub_a
                corners, keys = [a, b, sb, sa], [("y", nyp - 1), ("x", k + 1), None, ("x", k)]
            out.append(_make_block(np.array(corners), keys, lanes, walk))
    for k in range(nyp - 1):  # west and east
        for border_i, end in ((0, 0), (nxp - 1, -1)):
            a, b = nodes[border_i, k], nodes[border_i, k + 1]
            sa, sb = _stub_end(nodes, ("y", k), end), _stub_end(nodes, ("y", k + 1), end)
            if end == 0:  # west: stub_a, a, b, stub_b
                corners, keys = [sa, a, b, sb], [("y", k), ("x", 0), ("y", k + 1), None]
            else:  # east: a, stub_a, stub_b, b
                corners, keys = [a, sa, sb, b], [("y", k), None, ("y", k + 1), ("x", nxp - 1)]
            out.append(_make_block(np.array(corners), keys, lanes, walk))
    return out


def _make_block(corners: np.ndarray, keys: list, lanes: dict, walk: dict) -> Block:
    """A block from its corners and the road line along each edge (None = no road)."""
    road = np.array([lanes[k] * LANE_WIDTH for k in keys])
    side = np.array([walk[k] for k in keys])
    curb = inset_polygon(corners, road)
    return Block(corners, curb, inset_polygon(curb, side), side)


_FACADE_PALETTE = np.array([
    [0.72, 0.70, 0.66], [0.80, 0.76, 0.68], [0.62, 0.60, 0.58], [0.55, 0.33, 0.26],
    [0.66, 0.46, 0.36], [0.85, 0.84, 0.80], [0.45, 0.50, 0.55], [0.40, 0.48, 0.58],
    [0.75, 0.68, 0.55], [0.58, 0.62, 0.60],
])  # fmt: skip
_ACCENT_PALETTE = np.array([
    [0.85, 0.15, 0.12], [0.10, 0.45, 0.80], [0.95, 0.70, 0.10], [0.15, 0.60, 0.30],
    [0.90, 0.45, 0.10], [0.55, 0.20, 0.60], [0.95, 0.95, 0.95], [0.20, 0.20, 0.22],
])  # fmt: skip


def _bilinear(q: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Bilinear map of unit-square coords ``(s, t)`` onto quad ``q`` (4, 2): SW, SE, NE, NW."""
    s = np.asarray(s)[..., None]
    t = np.asarray(t)[..., None]
    return (1 - s) * (1 - t) * q[0] + s * (1 - t) * q[1] + s * t * q[2] + (1 - s) * t * q[3]


def _buildings(rng: np.random.Generator, block: Block) -> list[Building]:
    """Buildings along the four street fronts of a block's lot.

    Works in the lot's bilinear unit square: the south and north rows span the full width, the east
    and west rows fill between them; each row is split into frontages of random width and depth.
    """
    lot = block.lot
    width = 0.5 * (np.linalg.norm(lot[1] - lot[0]) + np.linalg.norm(lot[2] - lot[3]))
    depth = 0.5 * (np.linalg.norm(lot[3] - lot[0]) + np.linalg.norm(lot[2] - lot[1]))
    tall_block = rng.uniform() < 0.35
    out = []
    d_south = min(rng.uniform(12, 24), 0.42 * depth) / depth
    d_north = min(rng.uniform(12, 24), 0.42 * depth) / depth
    # (row axis, fixed side, row span, depth fraction, length); s: south/north rows, t: east/west
    rows = [
        ("s", 0.0, (0.0, 1.0), d_south, width),
        ("s", 1.0, (0.0, 1.0), d_north, width),
        ("t", 0.0, (d_south, 1.0 - d_north), min(rng.uniform(12, 24), 0.42 * width) / width, depth),
        ("t", 1.0, (d_south, 1.0 - d_north), min(rng.uniform(12, 24), 0.42 * width) / width, depth),
    ]
    for axis, side, (a, b), dep, length in rows:
        pos = a
        while pos < b - 1e-6:
            w = rng.uniform(8.0, 26.0) / length
            if b - (pos + w) < 6.0 / length:  # do not leave a sliver
                w = b - pos
            gap = rng.choice([0.0, 0.0, 0.0, rng.uniform(1.0, 3.0)]) / length
            lo, hi = pos, min(pos + w - gap, b)
            if hi - lo > 3.0 / length:
                d = dep * rng.uniform(0.7, 1.0)
                u0, u1 = (side, side + d) if side == 0.0 else (side - d, side)
                if axis == "s":
                    s, t = np.array([lo, hi, hi, lo]), np.array([u0, u0, u1, u1])
                else:
                    s, t = np.array([u0, u1, u1, u0]), np.array([lo, lo, hi, hi])
                out.append(_building(rng, _bilinear(lot, s, t), tall_block))
            pos += w
    return out


def _building(rng: np.random.Generator, footprint: np.ndarray, tall_block: bool) -> Building:
    """Random heights, colours and facade parameters for one footprint."""
    floor = rng.uniform(3.0, 3.6)
    floors = int(np.clip(rng.lognormal(np.log(9 if tall_block else 4), 0.5), 2, 30))
    # the parapet stays below a quarter storey so no partial row of windows shows under the roof
    height = CURB_HEIGHT + floors * floor + rng.uniform(0.3, 0.25 * floor)
    tier = 0.0
    if floors >= 8 and rng.uniform() < 0.5:
        tier = height + rng.integers(2, 8) * floor
    glassy = floors >= 12 and rng.uniform() < 0.5
    color = _FACADE_PALETTE[rng.integers(len(_FACADE_PALETTE))] * rng.uniform(0.9, 1.1)
    if glassy:
        color = np.array([0.35, 0.45, 0.55]) * rng.uniform(0.8, 1.1)
    return Building(
        footprint=footprint,
        height=float(height),
        tier_height=float(tier),
        tier_inset=float(rng.uniform(1.5, 4.0)),
        color=np.clip(color, 0, 1),
        accent=_ACCENT_PALETTE[rng.integers(len(_ACCENT_PALETTE))],
        roof_color=np.full(3, rng.uniform(0.35, 0.55)),
        window_spacing=float(rng.uniform(1.6, 2.2) if glassy else rng.uniform(2.4, 4.0)),
        floor_height=float(floor),
        storefront=bool(rng.uniform() < 0.75),
        sign=bool(rng.uniform() < 0.55),
        seed=int(rng.integers(1 << 20)),
    )


def _edge_samples(p0: np.ndarray, p1: np.ndarray, spacing: float, margin: float, phase: float):
    """Positions along edge p0->p1 every ``spacing`` metres, ``margin`` from both ends."""
    length = float(np.linalg.norm(p1 - p0))
    s = np.arange(margin + phase * spacing, length - margin, spacing)
    d = (p1 - p0) / length
    return p0 + s[:, None] * d, d


def _furniture(
    rng: np.random.Generator, blocks: list[Block], segments: list[Segment]
) -> StreetFurniture:
    """Trees and lamps along every curb edge; a traffic light on the right of every approach."""
    trees, tree_size, tree_col, lamps, lamp_yaw = [], [], [], [], []
    for block in blocks:
        for k in range(4):
            p0, p1 = block.curb[k], block.curb[(k + 1) % 4]
            walk = block.sidewalks[k]
            d = (p1 - p0) / np.linalg.norm(p1 - p0)
            inward = -_perp_right(d)
            pts, _ = _edge_samples(p0, p1, rng.uniform(8, 12), walk + 4.0, 0.5)
            if rng.uniform() < 0.8 and len(pts):
                trees.append(pts + inward * 1.0)
                n = len(pts)
                tree_size.append(np.stack([rng.uniform(2.0, 3.2, n), rng.uniform(1.6, 2.6, n)], 1))
                tree_col.append(rng.uniform([0.12, 0.30, 0.08], [0.25, 0.48, 0.16], (n, 3)))
            pts, _ = _edge_samples(p0, p1, 26.0, walk + 6.0, 0.0)
            lamps.append(pts + inward * 0.4)
            yaw = np.arctan2(-inward[1], -inward[0])  # arm points to the road
            lamp_yaw.append(np.full(len(pts), yaw))
    sig_xy, sig_yaw, sig_arm = [], [], []
    for seg in segments:
        if seg.end_node < 0:
            continue  # stubs: handled below
        for direction in (+1, -1):
            node = seg.end if direction > 0 else seg.start
            clear = seg.clear_end if direction > 0 else seg.clear_start
            d = seg.direction * direction  # approach direction, towards the node
            pos = node - d * (clear - 0.5) + _perp_right(d) * (seg.half_width + 0.6)
            sig_xy.append(pos)
            sig_yaw.append(np.arctan2(-d[1], -d[0]))
            sig_arm.append(seg.half_width * 0.75)
    for seg in segments:  # stubs approach their border node too
        if seg.end_node < 0:
            d = -seg.direction
            pos = seg.start - d * (seg.clear_start - 0.5) + _perp_right(d) * (seg.half_width + 0.6)
            sig_xy.append(pos)
            sig_yaw.append(np.arctan2(-d[1], -d[0]))
            sig_arm.append(seg.half_width * 0.75)
    cat = lambda xs, w: np.concatenate(xs) if xs else np.zeros((0, w))  # noqa: E731
    return StreetFurniture(
        tree_xy=cat(trees, 2), tree_size=cat(tree_size, 2), tree_color=cat(tree_col, 3),
        lamp_xy=cat(lamps, 2), lamp_yaw=np.concatenate(lamp_yaw),
        lamp_height=np.full(sum(len(x) for x in lamps), 7.5),
        signal_xy=np.array(sig_xy), signal_yaw=np.array(sig_yaw), signal_arm=np.array(sig_arm),
    )  # fmt: skip


def _lanes(segments: list[Segment], nodes: np.ndarray) -> tuple[list[Lane], list[Intersection]]:
    """Per segment, per direction, per lane: waypoints between the junction clearances."""
    lanes: list[Lane] = []
    incoming: dict[int, list[int]] = {}
    outgoing: dict[int, list[int]] = {}
    for sid, seg in enumerate(segments):
        for direction in (+1, -1):
            a, b = (seg.start, seg.end) if direction > 0 else (seg.end, seg.start)
            ca, cb = (seg.clear_start, seg.clear_end) if direction > 0 else (
                seg.clear_end, seg.clear_start)  # fmt: skip
            entry, exit_ = (seg.start_node, seg.end_node) if direction > 0 else (
                seg.end_node, seg.start_node)  # fmt: skip
            d = (b - a) / np.linalg.norm(b - a)
            right = _perp_right(d)
            for k in range(seg.lanes_per_direction):
                off = right * (k + 0.5) * LANE_WIDTH
                line = np.stack([a + d * ca + off, b - d * cb + off])
                pts = resample_polyline(line, WAYPOINT_SPACING)
                wp = np.concatenate([pts, np.zeros((len(pts), 1))], axis=1)
                lid = len(lanes)
                lanes.append(Lane(lid, sid, direction, k, LANE_WIDTH, wp, entry, exit_))
                if exit_ >= 0:
                    incoming.setdefault(exit_, []).append(lid)
                if entry >= 0:
                    outgoing.setdefault(entry, []).append(lid)
    inters = []
    nyp = nodes.shape[1]
    for nid in range(nodes.shape[0] * nyp):
        i, j = divmod(nid, nyp)
        center = np.array([*nodes[i, j], 0.0])
        inters.append(Intersection(nid, (i, j), center, tuple(incoming.get(nid, ())),
                                   tuple(outgoing.get(nid, ()))))  # fmt: skip
    return lanes, inters


def _offset_polyline(points: np.ndarray, offset: float) -> np.ndarray:
    """Offset an open polyline to its right by ``offset`` metres, mitring the joints."""
    d = np.diff(points, axis=0)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    n = _perp_right(d)
    normals = np.concatenate([n[:1], n[:-1] + n[1:], n[-1:]])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    cos = np.concatenate([[1.0], np.sum(n[:-1] * normals[1:-1], axis=1), [1.0]])
    return points + normals * (offset / cos)[:, None]


def _u_turn(center: np.ndarray, start: np.ndarray, n: int = 8) -> np.ndarray:
    """Half circle around ``center`` starting at ``start``, turning left (counter-clockwise)."""
    r = start - center
    ang = np.linspace(0.0, np.pi, n + 1)[1:-1]
    c, s = np.cos(ang), np.sin(ang)
    return center + np.stack([c * r[0] - s * r[1], s * r[0] + c * r[1]], axis=1)


def _vehicle_loops(nodes: np.ndarray, line_lanes: dict) -> list[np.ndarray]:
    """One closed loop per grid line and lane index: out along the line, U-turn, back, U-turn."""
    loops = []
    for line, path in _lines(nodes):
        d0 = (path[0] - path[1]) / np.linalg.norm(path[0] - path[1])
        d1 = (path[-1] - path[-2]) / np.linalg.norm(path[-1] - path[-2])
        full = np.concatenate([[path[0] + d0 * STUB_LENGTH], path, [path[-1] + d1 * STUB_LENGTH]])
        for k in range(line_lanes[line]):
            off = (k + 0.5) * LANE_WIDTH
            fwd = _offset_polyline(full, off)
            back = _offset_polyline(full[::-1], off)
            loops.append(np.concatenate([
                fwd, _u_turn(full[-1], fwd[-1]), back, _u_turn(full[0], back[-1])
            ]))  # fmt: skip
    return loops


def _pedestrian_loops(blocks: list[Block]) -> list[np.ndarray]:
    """Two loops per block on its sidewalk: counter-clockwise near the curb, clockwise inside."""
    loops = []
    for block in blocks:
        outer = inset_polygon(block.curb, 0.3 * block.sidewalks)
        inner = inset_polygon(block.curb, 0.7 * block.sidewalks)
        loops.append(outer)
        loops.append(inner[::-1].copy())
    return loops
