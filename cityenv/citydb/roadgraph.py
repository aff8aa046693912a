"""A road graph over a CityDB's panoramas: where an agent can go, and how far it is to a goal.

Nodes are panoramas (their camera centres, ENU metres). Edges join (1) consecutive panoramas of
one traversal, ordered by capture time then panorama index, when they lie at most ``max_step_m``
apart, (2) every pair of panoramas within ``link_radius_m`` of each other (so separate
captures of the same street are connected), and (3) every street end (a node with at most one
neighbour after (1) and (2)) to every panorama within ``junction_radius_m`` that (1) and (2) only
reach by a detour (more than twice the straight distance): captures stop a few
metres short of a junction on each arm, and the arms' last panoramas lie farther apart than the
capture spacing (15-19 m in the built-in town at 10 m spacing), so without (3) each street would
be an island. Street ends only, so parallel streets are never joined through a block. Edge
weights are metres. Nearest-node and distance-to-graph queries use horizontal (x, y) distances,
so a camera at another height than the references (a pedestrian's 1.6 m against a 2.5 m
capture rig) still snaps to the street below it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from cityenv.cache import LRUCache
from cityenv.citydb.reader import CityDB
from cityenv.errors import ShapeMismatchError

__all__ = ["RoadGraph"]

_DISTANCE_CACHE = 8  # single-source distance arrays kept (one per recent goal)

JUNCTION_RADIUS_M = 25.0
"""Default reach of a street end across a junction, metres (2.5 x the town's capture spacing)."""

_DETOUR = 2.0  # a junction edge is added where the graph's way round is longer than this factor


class RoadGraph:
    """An undirected graph of panoramas with metric edge lengths.

    Args:
        positions: Node positions, shape ``(N, 3)`` float64 ENU metres.
        edges: Node index pairs, shape ``(E, 2)`` int; duplicates and self-loops are dropped.

    Attributes:
        positions: Shape ``(N, 3)`` float64, read-only.
        edges: Shape ``(E, 2)`` int64, each pair sorted ``(i < j)``, unique, read-only.
        lengths: Edge lengths, shape ``(E,)`` float64 metres.
    """

    def __init__(self, positions: ArrayLike, edges: ArrayLike) -> None:
        p = np.asarray(positions, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] == 0:
            raise ShapeMismatchError(
                f"positions must have shape (N, 3) with N >= 1, got {p.shape}; pass the ENU "
                "centres of the panoramas."
            )
        self.positions = p.copy()
        self.positions.flags.writeable = False
        self.edges = _clean_edges(np.asarray(edges, dtype=np.int64).reshape(-1, 2), len(p))
        self.edges.flags.writeable = False
        self.lengths = np.linalg.norm(p[self.edges[:, 1]] - p[self.edges[:, 0]], axis=1)
        self._matrix = _adjacency(self.edges, self.lengths, len(p))
        self._kdtree = cKDTree(p[:, :2])
        self._distances = LRUCache[int, np.ndarray](_DISTANCE_CACHE)
        self._hops = LRUCache[int, np.ndarray](_DISTANCE_CACHE)
        self._components: np.ndarray | None = None

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_citydb(
        cls,
        db: CityDB,
        *,
        link_radius_m: float = 15.0,
        max_step_m: float = 20.0,
        junction_radius_m: float = JUNCTION_RADIUS_M,
    ) -> RoadGraph:
        """The road graph of a database's panoramas.

        Args:
            db: The opened database.
            link_radius_m: Join every pair of panoramas at most this far apart, metres.
            max_step_m: Join consecutive panoramas of a traversal at most this far apart, metres.
            junction_radius_m: Join each street end to every panorama this close, metres (0:
                no junction edges).

        Returns:
            The graph; node ``i`` is panorama index ``i``.
        """
        return cls.from_panoramas(
            db.panorama_positions,
            db.panorama_traversal,
            db.panorama_times,
            link_radius_m=link_radius_m,
            max_step_m=max_step_m,
            junction_radius_m=junction_radius_m,
        )

    @classmethod
    def from_panoramas(
        cls,
        positions: ArrayLike,
        traversal: ArrayLike | None = None,
        times: ArrayLike | None = None,
        *,
        link_radius_m: float = 15.0,
        max_step_m: float = 20.0,
        junction_radius_m: float = JUNCTION_RADIUS_M,
    ) -> RoadGraph:
        """The road graph of panoramas given as arrays.

        Args:
            positions: Panorama centres, shape ``(N, 3)`` ENU metres.
            traversal: Traversal code of each panorama, shape ``(N,)`` int (None: one traversal).
            times: Capture time of each panorama, shape ``(N,)`` (None: index order).
            link_radius_m: Join every pair at most this far apart, metres.
            max_step_m: Join consecutive panoramas of a traversal at most this far apart.
            junction_radius_m: Join each street end to every panorama this close (0: none).
        """
        p = np.asarray(positions, dtype=np.float64)
        n = p.shape[0] if p.ndim == 2 else 0
        traversal = np.zeros(n, np.int64) if traversal is None else np.asarray(traversal)
        times = np.zeros(n, np.int64) if times is None else np.asarray(times)
        sequence = _traversal_edges(p, traversal, times, max_step_m) if n else np.empty((0, 2))
        near = cKDTree(p).query_pairs(link_radius_m, output_type="ndarray") if n else sequence
        edges = np.concatenate([sequence, near]).astype(np.int64)
        if n and junction_radius_m > 0:
            edges = np.concatenate([edges, _junction_edges(p, edges, junction_radius_m)])
        return cls(p, edges)

    # --- sizes ----------------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        """Number of nodes ``N``."""
        return int(self.positions.shape[0])

    @property
    def num_edges(self) -> int:
        """Number of undirected edges ``E``."""
        return int(self.edges.shape[0])

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(min, max)`` corners of the nodes' bounding box, each ``(3,)`` ENU metres."""
        return self.positions.min(0), self.positions.max(0)

    def neighbors(self, node: int) -> np.ndarray:
        """Nodes joined to ``node`` by an edge, shape ``(d,)`` int64."""
        m = self._matrix
        return m.indices[m.indptr[node] : m.indptr[node + 1]].astype(np.int64)

    # --- nearest queries ------------------------------------------------------------------------
    def nearest_node(self, position: ArrayLike) -> int:
        """The node horizontally nearest to ``position`` ``(2,)`` or ``(3,)`` ENU metres."""
        return int(self._kdtree.query(_xy(position))[1])

    def nearest_nodes(self, position: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nodes horizontally nearest to ``position``.

        Returns:
            ``(distances, nodes)``, each ``(min(k, N),)``, nearest first.
        """
        k = min(int(k), self.num_nodes)
        d, i = self._kdtree.query(_xy(position), k=k)
        return np.atleast_1d(d).astype(np.float64), np.atleast_1d(i).astype(np.int64)

    def distance_to_graph(self, position: ArrayLike, k: int = 8) -> float:
        """Horizontal distance from ``position`` to the nearest edge (or node), metres.

        Looks at the edges of the ``k`` nearest nodes, which is exact when edges are shorter
        than the gaps between unrelated streets.
        """
        return self.nearest_edge(position, k)[0]

    def nearest_edge(self, position: ArrayLike, k: int = 8) -> tuple[float, int, int, float]:
        """The edge horizontally nearest to ``position`` among those of the ``k`` nearest nodes.

        Returns:
            ``(distance, a, b, t)``: distance in metres to the edge ``a -> b`` and the fraction
            ``t`` in ``[0, 1]`` of the way from ``a`` to ``b`` of the closest point (``a == b``,
            ``t == 0`` for an isolated node).
        """
        xy = _xy(position)
        d_nodes, nodes = self.nearest_nodes(xy, k)
        best = (float(d_nodes[0]), int(nodes[0]), int(nodes[0]), 0.0)
        for a in nodes:
            nbrs = self.neighbors(int(a))
            if not nbrs.size:
                continue
            d, t = _segment_distances(xy, self.positions[a, :2], self.positions[nbrs, :2])
            i = int(d.argmin())
            if d[i] < best[0] - 1e-12:
                best = (float(d[i]), int(a), int(nbrs[i]), float(t[i]))
        return best

    def height_at(self, xy: ArrayLike, k: int = 3) -> np.ndarray:
        """Node height interpolated at horizontal positions (inverse-distance weights).

        Args:
            xy: Positions, shape ``(n, 2)`` (or ``(n, 3)``; z is ignored) ENU metres.
            k: Nodes to interpolate from.

        Returns:
            Heights ``(n,)`` float64: the z of the nodes (camera centres of the references).
        """
        pts = np.asarray(xy, dtype=np.float64).reshape(-1, np.shape(xy)[-1])[:, :2]
        k = min(int(k), self.num_nodes)
        d, i = self._kdtree.query(pts, k=k)
        d, i = d.reshape(len(pts), k), i.reshape(len(pts), k)
        w = 1.0 / np.maximum(d, 1e-3) ** 2
        return (w * self.positions[i, 2]).sum(1) / w.sum(1)

    # --- paths ----------------------------------------------------------------------------------
    def distances_from(self, node: int) -> np.ndarray:
        """Shortest-path distance from ``node`` to every node, ``(N,)`` metres (inf if cut off).

        The last few results are cached (the environment asks for one goal per episode).
        """
        node = self._check_node(node)
        return self._distances.get_or_create(node, lambda: self._dijkstra(node))

    def _dijkstra(self, node: int) -> np.ndarray:
        distances = dijkstra(self._matrix, directed=False, indices=node)
        distances.flags.writeable = False  # shared by every caller through the cache
        return distances

    def next_hops(self, goal_node: int) -> np.ndarray:
        """The next node on a shortest way to ``goal_node`` from every node, ``(N,)`` int.

        ``-9999`` for the goal itself and for nodes that cannot reach it (scipy's convention).
        Cached like :meth:`distances_from`.
        """
        goal_node = self._check_node(goal_node)

        def hops() -> np.ndarray:
            # Undirected: the predecessor of i on the way out from the goal is i's next hop in.
            _, pred = dijkstra(
                self._matrix, directed=False, indices=goal_node, return_predecessors=True
            )
            pred.flags.writeable = False
            return pred

        return self._hops.get_or_create(goal_node, hops)

    def route_point(
        self, position: ArrayLike, goal_node: int, lookahead_m: float = 10.0
    ) -> np.ndarray:
        """The point about ``lookahead_m`` ahead of ``position`` on a shortest way to the goal.

        ``position`` is projected onto its nearest edge; the way continues through the end of
        that edge nearer the goal, then node by node (:meth:`next_hops`) until the nodes passed
        lie ``lookahead_m`` along from ``position`` (or the goal is reached).

        Args:
            position: ENU ``(2,)`` or ``(3,)`` metres.
            goal_node: The goal.
            lookahead_m: How far ahead, metres.

        Returns:
            ENU position ``(3,)`` of a node (the goal's when it is nearer than ``lookahead_m``;
            the nearest edge's end when the goal cannot be reached).
        """
        along, hops = self.distances_from(goal_node), self.next_hops(goal_node)
        _, a, b, t = self.nearest_edge(position)
        length = float(np.linalg.norm(self.positions[b] - self.positions[a]))
        node = a if along[a] + t * length <= along[b] + (1.0 - t) * length else b
        travelled = float(np.linalg.norm(self.positions[node, :2] - _xy(position)))
        while travelled < lookahead_m and hops[node] >= 0:
            nxt = int(hops[node])
            travelled += float(np.linalg.norm(self.positions[nxt] - self.positions[node]))
            node = nxt
        return self.positions[node]

    def shortest_path(self, a: int, b: int) -> list[int]:
        """Nodes of a shortest path from ``a`` to ``b``, both included.

        Raises:
            ValueError: If ``b`` cannot be reached from ``a``.
        """
        a, b = self._check_node(a), self._check_node(b)
        _, pred = dijkstra(self._matrix, directed=False, indices=a, return_predecessors=True)
        if a != b and pred[b] < 0:
            raise ValueError(
                f"node {b} must be reachable from node {a} for a path, got disconnected parts "
                "of the road graph; pick nodes of one component (RoadGraph.component)."
            )
        path = [b]
        while path[-1] != a:
            path.append(int(pred[path[-1]]))
        return path[::-1]

    def path_length(self, nodes: Sequence[int]) -> float:
        """Length of a polyline through ``nodes``, metres (straight between consecutive ones)."""
        if len(nodes) < 2:
            return 0.0
        p = self.positions[np.asarray(nodes, dtype=np.int64)]
        return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum())

    def distance_to_goal(self, position: ArrayLike, goal_node: int, k: int = 8) -> float:
        """Distance from ``position`` to ``goal_node`` along the graph, metres.

        ``position`` is projected onto its nearest edge (:meth:`nearest_edge`); the distance is
        the horizontal offset to that edge plus the shorter way to the goal through either end of
        the edge. It is exact for a camera on the streets and continuous as the camera moves
        along them (no jump halfway between two panoramas).

        Returns:
            The distance, ``inf`` if the goal cannot be reached from there.
        """
        along = self.distances_from(goal_node)
        offset, a, b, t = self.nearest_edge(position, k)
        length = float(np.linalg.norm(self.positions[b] - self.positions[a]))
        return offset + min(along[a] + t * length, along[b] + (1.0 - t) * length)

    def component(self) -> np.ndarray:
        """Connected-component label of each node, ``(N,)`` int."""
        if self._components is None:
            from scipy.sparse.csgraph import connected_components

            self._components = connected_components(self._matrix, directed=False)[1]
        return self._components

    def sample_start_goal(
        self,
        rng: np.random.Generator,
        min_dist_m: float = 50.0,
        max_dist_m: float = 300.0,
        goals: np.ndarray | None = None,
    ) -> tuple[int, int]:
        """A start node and a goal node ``min_dist_m`` to ``max_dist_m`` away along the graph.

        Starts are drawn from the largest connected component; see :meth:`sample_goal`.

        Args:
            rng: Source of randomness (``env.np_random``).
            min_dist_m: Smallest shortest-path distance, metres.
            max_dist_m: Largest shortest-path distance, metres.
            goals: Which nodes may be goals, bool ``(N,)`` (``None``: all).
        """
        labels = self.component()
        main = np.flatnonzero(labels == np.bincount(labels).argmax())
        if main.size < 2:
            raise ValueError(
                f"the road graph must have a component of at least 2 nodes to sample a goal, "
                f"got {self.num_nodes} nodes and {self.num_edges} edges; use a database with "
                "more panoramas or a larger link radius."
            )
        for _ in range(8):
            start = int(rng.choice(main))
            d = self.distances_from(start)
            if np.any((d >= min_dist_m) & (d <= max_dist_m) & _allowed(goals, len(d))):
                break
        return start, self.sample_goal(rng, start, min_dist_m, max_dist_m, goals)

    def sample_goal(
        self,
        rng: np.random.Generator,
        start: int,
        min_dist_m: float = 50.0,
        max_dist_m: float = 300.0,
        goals: np.ndarray | None = None,
    ) -> int:
        """A node ``min_dist_m`` to ``max_dist_m`` from ``start`` along the graph.

        When no node lies in the range (a tiny graph), the reachable node farthest from
        ``start`` within ``max_dist_m`` (``start`` itself if it has no neighbour). ``goals``
        (bool ``(N,)``, ``None``: all) restricts the choice to some nodes (held-out goals),
        the fallback included when any allowed node is reachable.
        """  # fmt: skip
        d = self.distances_from(start)
        allowed = _allowed(goals, len(d))
        ok = np.flatnonzero((d >= min_dist_m) & (d <= max_dist_m) & allowed)
        if ok.size:
            return int(rng.choice(ok))
        reachable = np.isfinite(d) & (d <= max_dist_m)
        if np.any(reachable & allowed):
            reachable &= allowed
        return int(np.where(reachable, d, -1.0).argmax())

    def heading_deg(self, a: int, b: int) -> float:
        """Compass heading (degrees clockwise from north) from node ``a`` to node ``b``."""
        dx, dy = (self.positions[b, :2] - self.positions[a, :2]).tolist()
        return math.degrees(math.atan2(dx, dy)) % 360.0

    def _check_node(self, node: int) -> int:
        i = int(node)
        if not 0 <= i < self.num_nodes:
            raise ValueError(
                f"node must be in [0, {self.num_nodes}), got {node}; nodes are panorama indices."
            )
        return i

    def __repr__(self) -> str:
        return f"RoadGraph(nodes={self.num_nodes}, edges={self.num_edges})"


# --- helpers ------------------------------------------------------------------------------------
def _xy(position: ArrayLike) -> np.ndarray:
    p = np.asarray(position, dtype=np.float64).reshape(-1)
    if p.shape[0] not in (2, 3) or not np.all(np.isfinite(p)):
        raise ShapeMismatchError(
            f"position must be finite with shape (2,) or (3,) ENU metres, got {p.tolist()}."
        )
    return p[:2]


def _allowed(goals: np.ndarray | None, n: int) -> np.ndarray:
    """A bool ``(n,)`` goal mask (all True for ``None``)."""
    if goals is None:
        return np.ones(n, bool)
    mask = np.asarray(goals, bool)
    if mask.shape != (n,):
        raise ShapeMismatchError(f"goals must be a bool mask of shape ({n},), got {mask.shape}.")
    return mask


def _clean_edges(edges: np.ndarray, n: int) -> np.ndarray:
    """Sorted unique ``(i < j)`` pairs without self-loops, ``(E, 2)`` int64."""
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise ShapeMismatchError(
            f"edges must join nodes in [0, {n}), got indices in [{edges.min()}, {edges.max()}]."
        )
    edges = np.sort(edges, axis=1)
    edges = edges[edges[:, 0] != edges[:, 1]]
    return np.unique(edges, axis=0) if edges.size else np.empty((0, 2), np.int64)


def _adjacency(edges: np.ndarray, lengths: np.ndarray, n: int) -> csr_matrix:
    """Symmetric sparse adjacency ``(N, N)`` with edge lengths (zero-length edges kept tiny)."""
    w = np.maximum(lengths, 1e-6)  # a stored 0 would read as "no edge"
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    return coo_matrix((np.concatenate([w, w]), (rows, cols)), shape=(n, n)).tocsr()


def _traversal_edges(
    positions: np.ndarray, traversal: np.ndarray, times: np.ndarray, max_step_m: float
) -> np.ndarray:
    """Pairs of consecutive panoramas of each traversal (time, then index order) within
    ``max_step_m``, ``(e, 2)`` int64."""
    order = np.lexsort((np.arange(len(positions)), times, traversal))
    a, b = order[:-1], order[1:]
    same = traversal[a] == traversal[b]
    close = np.linalg.norm(positions[b] - positions[a], axis=1) <= max_step_m
    keep = same & close
    return np.stack([a[keep], b[keep]], axis=1).astype(np.int64)


def _junction_edges(positions: np.ndarray, edges: np.ndarray, radius_m: float) -> np.ndarray:
    """Pairs joining each street end (degree <= 1 in ``edges``) to the nodes within ``radius_m``
    horizontally that ``edges`` does not already join to it by a short way (a path at most
    :data:`_DETOUR` times the straight distance), ``(e, 2)`` int64.

    The detour test keeps a street's own end alone (its neighbours along the street are already
    a straight path away) and joins only what a junction separates: the other arms.
    """
    n = len(positions)
    edges = _clean_edges(edges, n)  # a pair found by both rules must count once in the degree
    degree = np.bincount(edges.reshape(-1), minlength=n)
    ends = np.flatnonzero(degree <= 1)
    if not ends.size:
        return np.empty((0, 2), np.int64)
    lengths = np.linalg.norm(positions[edges[:, 1]] - positions[edges[:, 0]], axis=1)
    along = dijkstra(
        _adjacency(edges, lengths, n),
        directed=False,
        indices=ends,
        limit=_DETOUR * radius_m,
    )
    hits = cKDTree(positions[:, :2]).query_ball_point(positions[ends, :2], radius_m)
    pairs = []
    for row, (end, near) in enumerate(zip(ends, hits, strict=True)):
        near = np.asarray([j for j in near if j != end], np.int64)
        if not near.size:
            continue
        straight = np.linalg.norm(positions[near, :2] - positions[end, :2], axis=1)
        far_along = near[along[row, near] > _DETOUR * straight]
        pairs += [(int(end), int(j)) for j in far_along]
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def _segment_distances(
    xy: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from point ``xy`` ``(2,)`` to the segments from ``a`` ``(2,)`` to each of
    ``b`` ``(d, 2)``, and the fractions along them of the closest points; ``(d,)`` each."""
    ab = b - a
    denom = np.maximum((ab * ab).sum(1), 1e-12)
    t = np.clip(((xy - a) * ab).sum(1) / denom, 0.0, 1.0)
    closest = a + t[:, None] * ab
    return np.linalg.norm(closest - xy, axis=1), t
