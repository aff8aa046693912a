"""Headless moderngl renderer of the procedural town (EGL; Mesa llvmpipe works without a GPU).

One indexed static buffer holds the whole town, sorted into square tiles that are frustum-culled
and drawn front to back (small details are skipped in tiles where they would cover under
:data:`DETAIL_PIXELS` pixels). Actors are drawn instanced, one call per kind, after culling their
bounding spheres in numpy (per-instance position, yaw, two colours, scale). A frame draws the
actors, then the town, then the sky as a full-screen triangle at the far plane where nothing else
was drawn, and reads back RGB and a float32 attachment holding the metric z-depth (0 for sky,
negated on actors, which gives the dynamic mask) with one read each. The projection flips y so
that GL's rows come out in image order and nothing has to be flipped in numpy.

Where the time goes (256x256 on 2 llvmpipe threads): most of it is fragment shading, then vertex
work and triangle setup (on the calling thread), then a little Python. Hence flat varyings (only
position and surface coordinates are interpolated), per-triangle lighting in the vertex shader,
and front-to-back tiles with walls before the ground they hide. View-dependent shading is limited
to glass and wet ground (sky reflection and a sun highlight), so views of the static town agree
through forward splatting (tests/carla_tools/test_town_consistency.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import moderngl
import numpy as np

from carla_tools.town.meshes import VERTEX_ATTRIBUTES, VERTEX_FORMAT, Material
from carla_tools.town.sky import Lighting
from cityenv.geometry.camera import PinholeCamera

INSTANCE_FLOATS = 11
"""Per-instance floats of an actor: x, y, z, yaw, colour A (3), colour B (3), scale."""

DETAIL_SIZE = 2.5
"""Static triangles narrower than this are details (metres): trees, poles, lamps, signals, signs."""

DETAIL_PIXELS = 2.0
"""Details are dropped where they would be narrower than this many pixels (level of detail): at
256 px and 90 degrees beyond 160 m, at 512 px beyond 320 m."""

_LIGHTING_UNIFORMS = (
    "u_sun_dir", "u_sun_color", "u_zenith", "u_horizon", "u_sun_disc", "u_sky_amb",
    "u_ground_amb", "u_fog_color", "u_fog_density", "u_wet", "u_night",
)  # fmt: skip

_SKY_GLSL = """
uniform vec3 u_sun_dir;
uniform vec3 u_sun_color;
uniform vec3 u_zenith;
uniform vec3 u_horizon;
uniform float u_sun_disc;

vec3 sky_color(vec3 d) {
    float e = d.z;
    vec3 c = mix(u_horizon, u_zenith, pow(clamp(e, 0.0, 1.0), 0.6));
    c = mix(c, u_horizon * 0.8, clamp(-e * 3.0, 0.0, 1.0));
    float s = max(dot(d, u_sun_dir), 0.0);
    c += u_sun_color * u_sun_disc * (12.0 * pow(s, 2000.0) + 0.35 * pow(s, 16.0));
    return c;
}
"""

_SKY_VS = """
#version 330
void main() {
    // full-screen triangle at the far plane
    vec2 p = vec2((gl_VertexID << 1) & 2, gl_VertexID & 2) * 2.0 - 1.0;
    gl_Position = vec4(p, 1.0, 1.0);
}
"""

_SKY_FS = (
    """
#version 330
uniform mat3 u_ray;     // world ray direction of pixel (u, v): u_ray * (u, v, 1)
uniform vec3 u_fog_color;
uniform float u_fog_density;
layout(location = 0) out vec4 f_color;
layout(location = 1) out float f_depth;
"""
    + _SKY_GLSL
    + """
void main() {
    // the projection flips y, so window y is the image row v (pixel centres at +0.5)
    vec3 d = normalize(u_ray * vec3(gl_FragCoord.xy, 1.0));
    vec3 c = sky_color(d);
    float haze = clamp(u_fog_density * 40.0, 0.0, 1.0);   // dense fog hides the sky
    c = mix(c, u_fog_color, haze * (1.0 - 0.5 * clamp(d.z * 4.0, 0.0, 1.0)));
    f_color = vec4(c, 1.0);
    f_depth = 0.0;
}
"""
)

_LIGHT_GLSL = """
uniform vec3 u_sun_dir;
uniform vec3 u_sun_color;
uniform vec3 u_sky_amb;
uniform vec3 u_ground_amb;
uniform float u_wet;
// Per-triangle (flat normals): the incident light, and in alpha the wetness of the surface.
vec4 light(vec3 n) {
    vec3 amb = mix(u_ground_amb, u_sky_amb, 0.5 + 0.5 * n.z);
    return vec4(amb + u_sun_color * max(dot(n, u_sun_dir), 0.0),
                u_wet * smoothstep(0.7, 0.95, n.z));
}
"""

# Everything but position and surface coordinates is constant over a triangle (flat shading), so
# it goes through flat varyings: the rasteriser then interpolates 5 floats a fragment, not 18.
_STATIC_VS = (
    """
#version 330
uniform mat4 u_viewproj;
in vec3 in_pos; in vec3 in_normal; in vec3 in_color; in vec3 in_color2; in vec2 in_uv;
in vec4 in_params;
out vec3 v_pos; out vec2 v_uv;
flat out vec3 v_normal; flat out vec3 v_color; flat out vec3 v_color2; flat out vec4 v_params;
flat out vec4 v_light;
"""
    + _LIGHT_GLSL
    + """
void main() {
    v_pos = in_pos; v_normal = in_normal; v_color = in_color; v_color2 = in_color2;
    v_uv = in_uv; v_params = in_params; v_light = light(in_normal);
    gl_Position = u_viewproj * vec4(in_pos, 1.0);
}
"""
)

_ACTOR_VS = (
    """
#version 330
uniform mat4 u_viewproj;
in vec3 in_pos; in vec3 in_normal; in vec3 in_color; in vec3 in_color2; in vec2 in_uv;
in vec4 in_params;
in vec4 i_pose;      // per instance: x, y, z, yaw
in vec3 i_color_a; in vec3 i_color_b; in float i_scale;
out vec3 v_pos; out vec2 v_uv;
flat out vec3 v_normal; flat out vec3 v_color; flat out vec3 v_color2; flat out vec4 v_params;
flat out vec4 v_light;
"""
    + _LIGHT_GLSL
    + """
void main() {
    float c = cos(i_pose.w), s = sin(i_pose.w);
    mat2 rot = mat2(c, s, -s, c);
    vec3 p = in_pos * i_scale;
    v_pos = vec3(rot * p.xy, p.z) + i_pose.xyz;
    v_normal = vec3(rot * in_normal.xy, in_normal.z);
    // params.y picks the colour: 0 the template's, 1 the instance's colour A, 2 colour B
    v_color = in_params.y > 1.5 ? i_color_b : (in_params.y > 0.5 ? i_color_a : in_color);
    v_color2 = in_color2; v_uv = in_uv; v_params = vec4(in_params.x, 0.0, 0.0, 0.0);
    v_light = light(v_normal);
    gl_Position = u_viewproj * vec4(v_pos, 1.0);
}
"""
)

_SURFACE_FS = """
#version 330
uniform vec3 u_cam_pos;
uniform vec3 u_sun_dir;
uniform vec3 u_sun_color;
uniform vec3 u_zenith;
uniform vec3 u_horizon;
uniform vec3 u_fog_color;
uniform float u_fog_density;
uniform float u_night;
uniform float u_dynamic;
in vec3 v_pos; in vec2 v_uv;
flat in vec3 v_normal; flat in vec3 v_color; flat in vec3 v_color2; flat in vec4 v_params;
flat in vec4 v_light;
layout(location = 0) out vec4 f_color;
layout(location = 1) out float f_depth;   // metric z-depth, negative on dynamic objects
float hash(vec2 p) {   // sine-free hash (cheap on a software rasteriser)
    vec3 p3 = fract(vec3(p.xyx) * 0.1031);
    p3 += dot(p3, p3.yzx + 33.33);
    return fract((p3.x + p3.y) * p3.z);
}
float noise(vec2 p) {
    vec2 i = floor(p), f = fract(p);
    vec2 u = f * f * (3.0 - 2.0 * f);
    return mix(mix(hash(i), hash(i + vec2(1, 0)), u.x),
               mix(hash(i + vec2(0, 1)), hash(i + vec2(1, 1)), u.x), u.y);
}
// 1 inside [lo, hi], 0 outside, edges smoothed over one pixel footprint (anti-aliasing)
float band(float x, float lo, float hi) {
    float w = fwidth(x) + 1e-4;
    return smoothstep(lo - w, lo + w, x) * (1.0 - smoothstep(hi - w, hi + w, x));
}

void main() {
    vec3 albedo = v_color;
    vec3 emit = vec3(0.0);
    float gloss = 0.0;
    int mat = int(v_params.x + 0.5);
    if (mat == 1) {                                   // facade
        float pitch = v_params.y, fh = v_params.z;
        float seed = floor(v_params.w * 0.5);
        bool shop = mod(v_params.w, 2.0) > 0.5;
        vec2 cell = vec2(v_uv.x / pitch, (v_uv.y - 0.15) / fh);
        vec2 id = floor(cell);
        vec2 f = fract(cell);
        if (id.y < 1.0 && shop) {
            float glass = band(f.x, 0.06, 0.94) * band(f.y, 0.12, 0.72);
            float fascia = band(f.y, 0.78, 0.98);
            albedo = mix(albedo, v_color2, max(fascia, 1.0 - glass) * 0.85);
            albedo = mix(albedo, vec3(0.10, 0.12, 0.13), glass);
            emit += glass * vec3(1.0, 0.85, 0.6) * 0.7 * u_night;
            gloss = glass * 0.35;
        } else {
            float win = band(f.x, 0.22, 0.78) * band(f.y, 0.28, 0.80);
            float r = hash(id + vec2(seed * 0.013, seed * 0.007));
            albedo *= 0.92 + 0.08 * hash(vec2(id.y, seed));
            albedo = mix(albedo, vec3(0.12, 0.15, 0.19) + 0.06 * r, win);
            emit += win * step(0.5, r) * vec3(1.0, 0.82, 0.55) * 0.9 * u_night;
            gloss = win * 0.5;
        }
    } else if (mat == 2) {                            // road with markings
        float lanes = v_params.y, L = v_params.z;
        float along = v_uv.x, across = v_uv.y, a = abs(across);
        float c0 = v_color2.x, c1 = v_color2.y;
        float hw = lanes * 3.25;
        albedo *= 0.88 + 0.2 * noise(v_pos.xy * 0.8);
        float paint = 0.0;
        vec3 paint_col = vec3(0.85, 0.85, 0.82);
        float inside = band(along, c0, L - c1);
        if (inside > 0.0) {
            float yellow = band(a, 0.08, 0.23);
            float k = floor(a / 3.25 + 0.5);
            float dash = (k >= 1.0 && k < lanes) ? band(a - k * 3.25, -0.075, 0.075)
                         * band(fract(along / 9.0), 0.0, 0.35) : 0.0;
            float edge = band(a, hw - 0.35, hw - 0.2);
            paint = inside * max(max(dash, edge), yellow);
            paint_col = yellow > 0.0 ? vec3(0.85, 0.65, 0.1) : paint_col;
        }
        if (c0 > 0.0) {   // crosswalk and stop line at the start junction
            float cw = band(along, c0 - 5.0, c0 - 1.5) * band(fract(across / 1.0), 0.0, 0.5);
            float stop = band(along, c0 - 0.9, c0 - 0.5) * step(across, 0.0);
            paint = max(paint, max(cw, stop) * step(a, hw - 0.3));
        }
        if (c1 > 0.0) {   // and at the end junction
            float b = L - along;
            float cw = band(b, c1 - 5.0, c1 - 1.5) * band(fract(across / 1.0), 0.0, 0.5);
            float stop = band(b, c1 - 0.9, c1 - 0.5) * step(0.0, across);
            paint = max(paint, max(cw, stop) * step(a, hw - 0.3));
        }
        albedo = mix(albedo, paint_col, paint);
    } else if (mat == 3) {                            // sidewalk paving
        vec2 t = v_pos.xy / 0.6;
        vec2 f = fract(t);
        float grout = 1.0 - band(f.x, 0.05, 0.95) * band(f.y, 0.05, 0.95);
        albedo *= (0.9 + 0.15 * hash(floor(t))) * (1.0 - 0.25 * grout);
    } else if (mat == 4) {                            // emissive
        emit += v_color2 * (0.15 + 1.1 * u_night);
    } else if (mat == 5) {                            // ground
        albedo *= 0.75 + 0.45 * noise(v_pos.xy * 0.25);
    } else if (mat == 6) {                            // glass
        gloss = 0.6;
    }
    float wet = v_light.a;
    albedo *= 1.0 - 0.45 * wet;
    gloss = max(gloss, wet * 0.7);
    vec3 col = albedo * v_light.rgb;
    vec3 ray = v_pos - u_cam_pos;
    float dist = length(ray);
    if (gloss > 0.0) {   // reflect the sky gradient (the sun itself comes in as a highlight)
        vec3 V = ray / dist;
        vec3 r = reflect(V, v_normal);
        float c = 1.0 - max(-dot(V, v_normal), 0.0);
        float c2 = c * c;
        float fres = 0.06 + 0.94 * c2 * c2 * c;
        float e = max(r.z, 0.02) * inversesqrt(dot(r.xy, r.xy) + max(r.z, 0.02) * max(r.z, 0.02));
        vec3 env = mix(u_horizon, u_zenith, pow(e, 0.6));
        col = mix(col, env, clamp(fres * gloss * 1.5, 0.0, 1.0));
        col += u_sun_color * pow(max(dot(r, u_sun_dir), 0.0), 200.0) * gloss * 3.0;
    }
    col += emit;
    float fog = 1.0 - exp(-dist * u_fog_density);
    f_color = vec4(mix(col, u_fog_color, fog), 1.0);
    f_depth = (1.0 - 2.0 * u_dynamic) / gl_FragCoord.w;   // clip w = z-depth of the camera
}
"""


def gl_projection(camera: PinholeCamera, near: float, far: float) -> np.ndarray:
    """OpenGL clip matrix that acts directly on OpenCV camera coordinates.

    The OpenCV -> GL axis change is folded in: clip ``w = z_cv`` (points in front have positive
    w), and NDC x/y are ``2 u / W - 1`` / ``2 v / H - 1`` of the pixel coordinates
    ``u = fx x / z + cx``, ``v = fy y / z + cy``. NDC y thus grows with the image row, so GL's
    window row ``y`` (pixel centres at ``i + 0.5``) *is* image row ``v`` and a read-back needs no
    flip; the image is upside down in GL terms, which mirrors the winding of every triangle (the
    renderer culls with ``front_face = "cw"``).

    Args:
        camera: Intrinsics.
        near: Near plane distance, metres.
        far: Far plane distance, metres.

    Returns:
        Shape ``(4, 4)`` float64.
    """
    w, h = camera.width, camera.height
    return np.array([
        [2 * camera.fx / w, 0.0, 2 * camera.cx / w - 1.0, 0.0],
        [0.0, 2 * camera.fy / h, 2 * camera.cy / h - 1.0, 0.0],
        [0.0, 0.0, (far + near) / (far - near), -2 * far * near / (far - near)],
        [0.0, 0.0, 1.0, 0.0],
    ])  # fmt: skip


@dataclass
class _ActorKind:
    """An actor mesh drawn instanced, with its bounding sphere for culling."""

    capacity: int
    center: np.ndarray  # bounding-sphere centre in the template frame (3,)
    radius: float
    max_distance: float
    instance_vbo: moderngl.Buffer
    vao: moderngl.VertexArray
    vertices: int


@dataclass(frozen=True)
class _Tiles:
    """Static triangles sorted into square tiles; each tile's index range in three layers.

    A tile's indices run ``[first, detail_end)`` small details (dropped beyond the LOD distance),
    ``[detail_end, end)`` the rest; ``lo``/``hi`` bound the tile's triangles and
    ``detail_lo``/``detail_hi`` its details (the LOD distance is measured to those).
    """

    wide: bool  # whether the last tile holds the triangles wider than a tile (always drawn)
    first: np.ndarray  # (T,) int
    detail_end: np.ndarray  # (T,) int
    end: np.ndarray  # (T,) int
    lo: np.ndarray  # (T, 3)
    hi: np.ndarray  # (T, 3)
    detail_lo: np.ndarray  # (T, 3)
    detail_hi: np.ndarray  # (T, 3)


def _tile_layers(tri: np.ndarray) -> np.ndarray:
    """Draw order layer of each triangle ``(T, 3, VERTEX_FLOATS)`` in its tile: 0 detail, 1 upright,
    2 flat.

    Details are triangles under :data:`DETAIL_SIZE` across (poles, trunks, lamps, lights, tree
    crowns, signs, curbs) other than facades and the ground, whose dropping could open holes.
    Ground-level flat surfaces go last since from street level they hide nothing drawn after them
    but are hidden by walls in front (the early depth test then skips their shading).
    """
    xyz = tri[:, :, :3]
    ext = np.sort(xyz.max(axis=1) - xyz.min(axis=1), axis=1)
    flat = (ext[:, 0] < 1e-3) & (xyz[:, :, 2].max(axis=1) < 0.5)
    # the second-largest extent says how wide the triangle is
    detail = (ext[:, 1] < DETAIL_SIZE) & ~flat & (tri[:, 0, 14] != Material.FACADE)
    return np.where(detail, 0, np.where(flat, 2, 1))


def _index_vertices(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shared vertices of unindexed rows ``(N, F)``: ``(unique (U, F), indices (N,) uint32)``."""
    view = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))
    _, first, inverse = np.unique(view.ravel(), return_index=True, return_inverse=True)
    return rows[first], inverse.astype(np.uint32)


def _boxes_visible(viewproj: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Conservative frustum test of boxes (min, max corners ``(T, 3)``) -> bool ``(T,)``.

    A box is out when, for one frustum plane, its corner farthest along the plane's normal (the
    "positive vertex") is behind it.
    """
    m = viewproj
    planes = np.stack([m[3] + m[0], m[3] - m[0], m[3] + m[1], m[3] - m[1], m[3] + m[2],
                       m[3] - m[2]])  # fmt: skip
    pos = np.where(planes[None, :, :3] > 0, hi[:, None, :], lo[:, None, :])  # (T, 6, 3)
    return np.all(np.einsum("tpk,pk->tp", pos, planes[:, :3]) + planes[:, 3] >= 0, axis=1)


class TownRenderer:
    """Owns the GL context, programs and buffers.

    Args:
        near: Near plane, metres.
        far: Far plane, metres.
        context: An existing moderngl context; a standalone EGL context if None.
    """

    def __init__(
        self, near: float = 0.1, far: float = 3000.0, context: moderngl.Context | None = None
    ) -> None:
        self.near, self.far = float(near), float(far)
        self.ctx = context or moderngl.create_standalone_context(backend="egl")
        self._sky = self.ctx.program(vertex_shader=_SKY_VS, fragment_shader=_SKY_FS)
        self._static_prog = self.ctx.program(vertex_shader=_STATIC_VS, fragment_shader=_SURFACE_FS)
        self._actor_prog = self.ctx.program(vertex_shader=_ACTOR_VS, fragment_shader=_SURFACE_FS)
        self._static_prog["u_dynamic"].value = 0.0
        self._actor_prog["u_dynamic"].value = 1.0
        self._sky_vao = self.ctx.vertex_array(self._sky, [])
        self._static_vao: moderngl.VertexArray | None = None
        self._tiles: _Tiles | None = None
        self._actors: dict[str, _ActorKind] = {}
        self._instances: dict[str, np.ndarray] = {}
        self._fbos: dict[tuple[int, int], moderngl.Framebuffer] = {}
        self._lighting: Lighting | None = None
        self._lighting_uniforms = [
            (name, prog[name])
            for prog in (self._sky, self._static_prog, self._actor_prog)
            for name in _LIGHTING_UNIFORMS
            if name in prog
        ]
        self.triangles = 0
        """Triangles in the static town."""
        self.triangles_drawn = 0
        """Triangles submitted in the last frame (static tiles and actors)."""

    # --- scene --------------------------------------------------------------------------------
    def set_static(self, vertices: np.ndarray, tile_size: float = 40.0) -> None:
        """Upload the static town, indexed and sorted into square tiles for frustum culling.

        Args:
            vertices: Vertex rows ``(N, VERTEX_FLOATS)`` float32 (three per triangle), see the
                meshes module.
            tile_size: Edge of the culling tiles in metres; a triangle belongs to the tile holding
                its centroid, and each tile is culled by the bounding box of its triangles.
                Triangles wider than a tile (roads, lots, curbs, the ground) would inflate those
                boxes; they form one extra tile that is always drawn, last.
        """
        rows = np.asarray(vertices, dtype=np.float32)
        tri = rows.reshape(-1, 3, rows.shape[1])
        xyz = tri[:, :, :3]
        cell = np.floor(xyz[:, :, :2].mean(axis=1) / tile_size).astype(np.int64)
        cell -= cell.min(axis=0)
        tile = cell[:, 1] * (cell[:, 0].max() + 1) + cell[:, 0]
        wide = np.max(xyz[:, :, :2].max(axis=1) - xyz[:, :, :2].min(axis=1), axis=1) > tile_size
        tile[wide] = tile.max() + 1
        layer = _tile_layers(tri)
        order = np.lexsort((layer, tile))
        tri, tile, layer, xyz = tri[order], tile[order], layer[order], xyz[order]
        starts = np.flatnonzero(np.r_[True, tile[1:] != tile[:-1]])
        ends = np.r_[starts[1:], len(tri)]
        # first non-detail triangle of each tile (layers are sorted within a tile)
        detail_end = starts + np.add.reduceat((layer == 0).astype(np.int64), starts)
        tri_lo, tri_hi = xyz.min(axis=1), xyz.max(axis=1)
        far = np.float32(1e30)  # tiles without details: an empty box far away
        self._tiles = _Tiles(
            wide=bool(wide.any()), first=starts * 3, detail_end=detail_end * 3, end=ends * 3,
            lo=np.minimum.reduceat(tri_lo, starts), hi=np.maximum.reduceat(tri_hi, starts),
            detail_lo=np.minimum.reduceat(np.where(layer[:, None] == 0, tri_lo, far), starts),
            detail_hi=np.maximum.reduceat(np.where(layer[:, None] == 0, tri_hi, -far), starts),
        )  # fmt: skip
        unique, index = _index_vertices(tri.reshape(-1, rows.shape[1]))
        self.triangles = len(tri)
        vbo = self.ctx.buffer(np.ascontiguousarray(unique).tobytes())
        ibo = self.ctx.buffer(index.tobytes())
        self._static_vao = self.ctx.vertex_array(
            self._static_prog, [(vbo, VERTEX_FORMAT, *VERTEX_ATTRIBUTES)], ibo, 4,
            skip_errors=True,
        )  # fmt: skip

    def add_actor_kind(
        self, name: str, template: np.ndarray, max_instances: int, max_distance: float = 1e9
    ) -> None:
        """Register an instanced actor mesh.

        Args:
            name: Kind name, used by :meth:`set_instances`.
            template: Vertex rows ``(V, VERTEX_FLOATS)`` in the actor's local frame (x forward,
                y left, z up); ``params[1]`` selects the colour (0 the template's, 1 the
                instance's colour A, 2 colour B).
            max_instances: Capacity of its instance buffer.
            max_distance: Instances farther than this from the camera are not drawn (they would
                cover a pixel or less), metres.
        """
        template = np.ascontiguousarray(template, dtype=np.float32)
        xyz = template[:, :3]
        center = 0.5 * (xyz.min(axis=0) + xyz.max(axis=0))
        radius = float(np.linalg.norm(xyz - center, axis=1).max()) * 1.15  # room for scale
        vbo = self.ctx.buffer(template.tobytes())
        instance_vbo = self.ctx.buffer(reserve=max(max_instances, 1) * INSTANCE_FLOATS * 4)
        vao = self.ctx.vertex_array(
            self._actor_prog,
            [(vbo, VERTEX_FORMAT, *VERTEX_ATTRIBUTES),
             (instance_vbo, "4f 3f 3f 1f/i", "i_pose", "i_color_a", "i_color_b", "i_scale")],
            skip_errors=True,
        )  # fmt: skip
        self._actors[name] = _ActorKind(
            max_instances, center, radius, max_distance, instance_vbo, vao, len(template)
        )
        self._instances[name] = np.zeros((0, INSTANCE_FLOATS), np.float32)

    def set_instances(self, name: str, instances: np.ndarray) -> None:
        """Replace the instances of an actor kind (uploaded, after culling, at the next render).

        Args:
            name: A kind registered with :meth:`add_actor_kind`.
            instances: ``(M, INSTANCE_FLOATS)``: x, y, z, yaw, colour A, colour B, scale.

        Raises:
            ValueError: If ``M`` exceeds the kind's capacity.
        """
        kind = self._actors[name]
        if len(instances) > kind.capacity:
            raise ValueError(
                f"{name}: {len(instances)} instances exceed the capacity {kind.capacity}."
            )
        self._instances[name] = np.ascontiguousarray(instances, dtype=np.float32)

    # --- frames -------------------------------------------------------------------------------
    def _fbo(self, width: int, height: int) -> moderngl.Framebuffer:
        key = (width, height)
        if key not in self._fbos:
            self._fbos[key] = self.ctx.framebuffer(
                color_attachments=[
                    self.ctx.renderbuffer(key, 3),
                    # metric z-depth, 0 = sky, negated on dynamic objects
                    self.ctx.renderbuffer(key, 1, dtype="f4"),
                ],
                depth_attachment=self.ctx.depth_renderbuffer(key),
            )
        return self._fbos[key]

    def _set_lighting(self, lighting: Lighting) -> None:
        """Write the lighting uniforms, only when the lighting object changed."""
        if lighting is self._lighting:
            return
        values = {
            "u_sun_dir": lighting.sun_dir, "u_sun_color": lighting.sun_color,
            "u_zenith": lighting.zenith, "u_horizon": lighting.horizon,
            "u_sun_disc": lighting.sun_disc, "u_sky_amb": lighting.sky_ambient,
            "u_ground_amb": lighting.ground_ambient, "u_fog_color": lighting.fog_color,
            "u_fog_density": lighting.fog_density, "u_wet": lighting.wetness,
            "u_night": lighting.night,
        }  # fmt: skip
        for key, uniform in self._lighting_uniforms:
            value = values[key]
            uniform.value = tuple(map(float, value)) if np.ndim(value) else float(value)
        self._lighting = lighting

    def _set_camera(self, viewproj: np.ndarray, cam_pos: np.ndarray, ray: np.ndarray) -> None:
        # GL matrices are column-major: hand over the transpose's bytes
        vp = viewproj.T.astype(np.float32).tobytes()
        pos = cam_pos.astype(np.float32).tobytes()
        for prog in (self._static_prog, self._actor_prog):
            prog["u_viewproj"].write(vp)
            prog["u_cam_pos"].write(pos)
        self._sky["u_ray"].write(ray.T.astype(np.float32).tobytes())

    def _draw_static(self, viewproj: np.ndarray, cam_pos: np.ndarray, lod_distance: float) -> int:
        """Draw the visible tiles front to back; returns the triangle count drawn.

        Front to back lets the early depth test skip shading hidden surfaces (a few dozen draw
        calls over tiles; objects are never looped over). Tiles whose nearest detail is beyond
        ``lod_distance`` skip their details.
        """
        t = self._tiles
        if self._static_vao is None or t is None:
            return 0
        visible = np.flatnonzero(_boxes_visible(viewproj, t.lo, t.hi))
        if t.wide:
            visible = visible[visible != len(t.first) - 1]
        centre = 0.5 * (t.lo[visible] + t.hi[visible])
        visible = visible[np.argsort(np.einsum("ij,ij->i", centre - cam_pos, centre - cam_pos))]
        if t.wide:  # the wide flat surfaces last: walls in front already hide parts of them
            visible = np.r_[visible, len(t.first) - 1]
        lo, hi = t.detail_lo[visible], t.detail_hi[visible]
        near = np.linalg.norm(np.clip(cam_pos, lo, hi) - cam_pos, axis=1)
        first = np.where(near < lod_distance, t.first[visible], t.detail_end[visible])
        count = t.end[visible] - first
        for f, c in zip(first.tolist(), count.tolist(), strict=True):
            if c:
                self._static_vao.render(moderngl.TRIANGLES, vertices=c, first=f)
        return int(count.sum()) // 3

    def _draw_actors(self, camera: PinholeCamera, world_to_cam: np.ndarray) -> int:
        """Cull the instances by bounding sphere, upload and draw the rest, one call per kind."""
        names = [name for name in self._actors if len(self._instances[name])]
        if not names:
            return 0
        rows = [self._instances[name] for name in names]
        kinds = [self._actors[name] for name in names]
        counts = [len(r) for r in rows]
        # per-row sphere: centre above the instance origin, radius grown by the centre's offset
        lift = np.repeat([k.center[2] for k in kinds], counts)
        grow = np.repeat([k.radius + np.hypot(*k.center[:2]) for k in kinds], counts)
        reach = np.repeat([k.max_distance for k in kinds], counts)
        stacked = np.concatenate(rows)
        visible = _spheres_visible(camera, world_to_cam, stacked, lift, grow, reach)
        drawn = 0
        for kind, part, keep in zip(kinds, rows, np.split(visible, np.cumsum(counts)[:-1]),
                                    strict=True):  # fmt: skip
            part = part[keep]
            if len(part):
                kind.instance_vbo.write(part.tobytes())
                kind.vao.render(moderngl.TRIANGLES, vertices=kind.vertices, instances=len(part))
                drawn += len(part) * kind.vertices // 3
        return drawn

    def render(
        self, camera: PinholeCamera, cam_to_world: np.ndarray, lighting: Lighting
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render one view.

        Args:
            camera: Intrinsics; the image is ``camera.height x camera.width``.
            cam_to_world: Camera-to-world (OpenCV camera, ENU world) transform, shape ``(4, 4)``.
            lighting: Sun, sky, fog and weather state.

        Returns:
            ``(rgb, depth, dynamic)``: uint8 ``(H, W, 3)``, metric z-depth float32 ``(H, W)`` with 0
            for sky, and bool ``(H, W)`` marking vehicle and pedestrian pixels.
        """
        w, h = camera.width, camera.height
        world_to_cam = np.linalg.inv(cam_to_world)
        viewproj = gl_projection(camera, self.near, self.far) @ world_to_cam
        cam_pos = cam_to_world[:3, 3]
        self._set_lighting(lighting)
        self._set_camera(viewproj, cam_pos, cam_to_world[:3, :3] @ np.linalg.inv(camera.K))
        fbo = self._fbo(w, h)
        fbo.use()
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        ctx = self.ctx
        ctx.enable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
        ctx.front_face = "cw"  # the y-flipping projection mirrors the counter-clockwise winding
        ctx.depth_func = "<"
        # beyond this distance a detail of DETAIL_SIZE covers less than DETAIL_PIXELS pixels
        lod = DETAIL_SIZE * max(camera.fx, camera.fy) / DETAIL_PIXELS
        drawn = self._draw_actors(camera, world_to_cam)
        drawn += self._draw_static(viewproj, cam_pos, lod)
        self.triangles_drawn = drawn
        # The sky last, at the far plane, only where nothing was drawn (early depth test skips
        # the covered pixels); it writes 0 to the z-depth attachment.
        ctx.disable(moderngl.CULL_FACE)
        ctx.depth_func = "<="
        fbo.depth_mask = False
        self._sky_vao.render(moderngl.TRIANGLES, vertices=3)
        fbo.depth_mask = True
        rgb = np.empty((h, w, 3), np.uint8)
        depth = np.empty((h, w), np.float32)
        fbo.read_into(rgb, components=3)
        fbo.read_into(depth, components=1, attachment=1, dtype="f4")
        dynamic = depth < 0.0  # actors write their depth negated
        np.abs(depth, out=depth)
        return rgb, depth, dynamic

    def release(self) -> None:
        """Free GL objects and the context."""
        self.ctx.release()


def _spheres_visible(
    camera: PinholeCamera,
    world_to_cam: np.ndarray,
    rows: np.ndarray,
    lift: np.ndarray,
    radius: np.ndarray,
    reach: np.ndarray,
) -> np.ndarray:
    """Instances whose bounding sphere may be in view and within their draw distance.

    Tests the sphere centres, in OpenCV camera coordinates, against the four side planes of the
    view frustum (through the camera centre and the image borders) and against ``z > -r``.

    Args:
        camera: Intrinsics.
        world_to_cam: ``(4, 4)`` world-to-camera transform.
        rows: ``(M, INSTANCE_FLOATS)`` instances.
        lift: Height of each sphere centre above its instance origin ``(M,)``, metres.
        radius: Sphere radius at scale 1 ``(M,)``, metres.
        reach: Draw distance ``(M,)``, metres.

    Returns:
        Bool ``(M,)``.
    """
    r = (radius * rows[:, 10]).astype(np.float32)
    centre = rows[:, :3].astype(np.float64)
    centre[:, 2] += lift
    p = centre @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    planes = np.array([
        [camera.fx, 0.0, camera.cx], [-camera.fx, 0.0, camera.width - camera.cx],
        [0.0, camera.fy, camera.cy], [0.0, -camera.fy, camera.height - camera.cy],
    ])  # fmt: skip
    planes /= np.linalg.norm(planes, axis=1, keepdims=True)
    inside = np.all(p @ planes.T > -r[:, None], axis=1)
    return inside & (p[:, 2] > -r) & (np.einsum("ij,ij->i", p, p) < (reach + r) ** 2)
