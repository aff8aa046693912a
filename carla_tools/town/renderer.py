"""Headless moderngl renderer of the procedural town (EGL; Mesa llvmpipe works without a GPU).

One static vertex buffer holds the whole town, sorted into tiles that are frustum-culled and drawn
front to back; the visible actors (per-instance position, yaw, two colours, scale) are baked into
one dynamic buffer per frame and drawn in one call. A
frame draws the town, then the actors, then the sky as a full-screen triangle at the far plane
where nothing else was drawn, and reads back RGBA
(alpha = dynamic-object mask) and the depth buffer, which is linearised to metric z-depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import moderngl
import numpy as np

from carla_tools.town.meshes import VERTEX_ATTRIBUTES, VERTEX_FORMAT
from carla_tools.town.sky import Lighting
from cityenv.geometry.camera import PinholeCamera

INSTANCE_FLOATS = 11
"""Per-instance floats of an actor: x, y, z, yaw, colour A (3), colour B (3), scale."""

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
uniform float u_height; // image height in pixels
uniform vec3 u_fog_color;
uniform float u_fog_density;
out vec4 f_color;
"""
    + _SKY_GLSL
    + """
void main() {
    // GL window y grows upwards; image rows grow downwards: v = H - y (pixel centres at +0.5).
    vec3 d = normalize(u_ray * vec3(gl_FragCoord.x, u_height - gl_FragCoord.y, 1.0));
    vec3 c = sky_color(d);
    float haze = clamp(u_fog_density * 40.0, 0.0, 1.0);   // dense fog hides the sky
    c = mix(c, u_fog_color, haze * (1.0 - 0.5 * clamp(d.z * 4.0, 0.0, 1.0)));
    f_color = vec4(c, 0.0);
}
"""
)

_STATIC_VS = """
#version 330
uniform mat4 u_viewproj;
in vec3 in_pos; in vec3 in_normal; in vec3 in_color; in vec3 in_color2; in vec2 in_uv;
in vec4 in_params;
out vec3 v_pos; out vec3 v_normal; out vec3 v_color; out vec3 v_color2; out vec2 v_uv;
flat out vec4 v_params;
void main() {
    v_pos = in_pos; v_normal = in_normal; v_color = in_color; v_color2 = in_color2;
    v_uv = in_uv; v_params = in_params;
    gl_Position = u_viewproj * vec4(in_pos, 1.0);
}
"""

_SURFACE_FS = (
    """
#version 330
uniform vec3 u_cam_pos;
uniform vec3 u_sky_amb;
uniform vec3 u_ground_amb;
uniform vec3 u_fog_color;
uniform float u_fog_density;
uniform float u_wet;
uniform float u_night;
uniform float u_dynamic;
in vec3 v_pos; in vec3 v_normal; in vec3 v_color; in vec3 v_color2; in vec2 v_uv;
flat in vec4 v_params;
out vec4 f_color;
"""
    + _SKY_GLSL
    + """
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
    vec3 n = normalize(v_normal);
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
    vec3 V = normalize(v_pos - u_cam_pos);
    float wet = u_wet * smoothstep(0.7, 0.95, n.z);
    albedo *= 1.0 - 0.45 * wet;
    gloss = max(gloss, wet * 0.7);
    vec3 amb = mix(u_ground_amb, u_sky_amb, 0.5 + 0.5 * n.z);
    vec3 col = albedo * (amb + u_sun_color * max(dot(n, u_sun_dir), 0.0));
    if (gloss > 0.0) {
        vec3 r = reflect(V, n);
        float fres = 0.06 + 0.94 * pow(1.0 - max(dot(-V, n), 0.0), 5.0);
        vec3 env = sky_color(normalize(vec3(r.xy, max(r.z, 0.02))));
        col = mix(col, env, clamp(fres * gloss * 1.5, 0.0, 1.0));
        col += u_sun_color * pow(max(dot(r, u_sun_dir), 0.0), 200.0) * gloss * 3.0;
    }
    col += emit;
    float dist = length(v_pos - u_cam_pos);
    float fog = 1.0 - exp(-dist * u_fog_density);
    col = mix(col, u_fog_color, fog);
    f_color = vec4(col, u_dynamic);
}
"""
)


def gl_projection(camera: PinholeCamera, near: float, far: float) -> np.ndarray:
    """OpenGL clip matrix that acts directly on OpenCV camera coordinates.

    The OpenCV -> GL axis flip (GL eye space has y up and looks down -z) is folded in: clip
    ``w = z_cv`` (points in front have positive w), image rows grow downwards while NDC y grows
    upwards (hence ``-2 fy / H``), and NDC x/y are ``2 u / W - 1`` / ``1 - 2 v / H`` of the pixel
    coordinates ``u = fx x / z + cx``, ``v = fy y / z + cy``. Since GL puts pixel centres at window
    coordinates ``i + 0.5``, a point lands in the pixel :meth:`PinholeCamera.project` names once the
    read-back image is flipped upside down (row 0 of a GL read is the bottom row).

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
        [0.0, -2 * camera.fy / h, 1.0 - 2 * camera.cy / h, 0.0],
        [0.0, 0.0, (far + near) / (far - near), -2 * far * near / (far - near)],
        [0.0, 0.0, 1.0, 0.0],
    ])  # fmt: skip


def linearize_depth(d: np.ndarray, near: float, far: float) -> np.ndarray:
    """Metric z-depth from window depth values in [0, 1]; 1 (nothing drawn) becomes 0.

    Args:
        d: Depth-buffer values, any shape.
        near: Near plane distance used by :func:`gl_projection`.
        far: Far plane distance.

    Returns:
        z-depth in metres, float32, same shape.
    """
    d = d.astype(np.float64)
    ndc = 2.0 * d - 1.0
    a, b = (far + near) / (far - near), -2 * far * near / (far - near)
    with np.errstate(divide="ignore"):
        z = b / (ndc - a)
    return np.where(d >= 1.0, 0.0, z).astype(np.float32)


@dataclass
class _ActorKind:
    template: np.ndarray  # (V, VERTEX_FLOATS) float32, local frame
    capacity: int
    center: np.ndarray  # bounding-sphere centre in the template frame (3,)
    radius: float
    max_distance: float


def _pose_template(template: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Bake instances of an actor template into world-space vertex rows (one batch, one draw).

    A software rasteriser runs instanced draws one instance at a time, so placing the few hundred
    visible actors with numpy and drawing them together is much faster than GL instancing.

    Args:
        template: ``(V, VERTEX_FLOATS)`` float32; ``params[1]`` selects the colour (0 template,
            1 instance colour A, 2 colour B).
        rows: ``(M, INSTANCE_FLOATS)`` instances.

    Returns:
        ``(M V, VERTEX_FLOATS)`` float32.
    """
    m, v = len(rows), len(template)
    out = np.empty((m, v, template.shape[1]), dtype=np.float32)
    out[:] = template
    c, s = np.cos(rows[:, 3])[:, None], np.sin(rows[:, 3])[:, None]
    p = template[None, :, 0:3] * rows[:, 10, None, None]
    out[:, :, 0] = c * p[:, :, 0] - s * p[:, :, 1] + rows[:, 0, None]
    out[:, :, 1] = s * p[:, :, 0] + c * p[:, :, 1] + rows[:, 1, None]
    out[:, :, 2] = p[:, :, 2] + rows[:, 2, None]
    n = template[None, :, 3:6]
    out[:, :, 3] = c * n[:, :, 0] - s * n[:, :, 1]
    out[:, :, 4] = s * n[:, :, 0] + c * n[:, :, 1]
    tint = template[:, 15]
    out[:, tint == 1, 6:9] = rows[:, None, 4:7]
    out[:, tint == 2, 6:9] = rows[:, None, 7:10]
    out[:, :, 15] = 0.0
    return out.reshape(m * v, template.shape[1])


def _outside_planes(clip: np.ndarray) -> np.ndarray:
    """Clip-space points ``(..., P, 4)``: whether all P lie outside one frustum plane ``(...)``."""
    x, y, z, w = np.moveaxis(clip, -1, 0)
    planes = (w + x, w - x, w + y, w - y, w + z, w - z)
    return np.any(np.stack([np.all(p < 0, axis=-1) for p in planes]), axis=0)


def _boxes_visible(viewproj: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Conservative frustum test of boxes (min, max corners ``(T, 3)``) -> bool ``(T,)``."""
    corners = np.stack(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij"), -1).reshape(8, 3)
    pts = np.where(corners[None].astype(bool), hi[:, None, :], lo[:, None, :])  # (T, 8, 3)
    clip = pts @ viewproj[:3, :3].T + viewproj[:3, 3]
    clip = np.concatenate([clip, (pts @ viewproj[3, :3] + viewproj[3, 3])[..., None]], axis=-1)
    return ~_outside_planes(clip)


def _spheres_visible(
    camera: PinholeCamera, world_to_cam: np.ndarray, rows: np.ndarray, kind: _ActorKind
) -> np.ndarray:
    """Instances whose bounding sphere may be in view and within the kind's draw distance.

    Tests the sphere centres, in OpenCV camera coordinates, against the four side planes of the
    view frustum (through the camera centre and the image borders) and against ``z > -r``.
    """
    yaw = rows[:, 3].astype(np.float64)
    c, s = np.cos(yaw), np.sin(yaw)
    cx, cy, cz = kind.center
    center = rows[:, :3] + np.stack([c * cx - s * cy, s * cx + c * cy, np.full_like(c, cz)], 1)
    r = kind.radius * rows[:, 10]
    p = center @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    planes = np.array([
        [camera.fx, 0.0, camera.cx], [-camera.fx, 0.0, camera.width - camera.cx],
        [0.0, camera.fy, camera.cy], [0.0, -camera.fy, camera.height - camera.cy],
    ])  # fmt: skip
    planes /= np.linalg.norm(planes, axis=1, keepdims=True)
    inside = np.all(p @ planes.T > -r[:, None], axis=1)
    return inside & (p[:, 2] > -r) & (np.linalg.norm(p, axis=1) < kind.max_distance + r)


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
        self._sky_vao = self.ctx.vertex_array(self._sky, [])
        self._static_vao: moderngl.VertexArray | None = None
        self._actors: dict[str, _ActorKind] = {}
        self._instances: dict[str, np.ndarray] = {}
        self._actor_vao: moderngl.VertexArray | None = None
        self._fbos: dict[tuple[int, int], moderngl.Framebuffer] = {}

    # --- scene --------------------------------------------------------------------------------
    def set_static(self, vertices: np.ndarray, tile_size: float = 40.0) -> None:
        """Upload the static town, sorted into square tiles for frustum culling.

        Args:
            vertices: Vertex rows ``(N, VERTEX_FLOATS)`` float32, see the meshes module.
            tile_size: Edge of the culling tiles in metres; a triangle belongs to the tile holding
                its centroid, and each tile is culled by the bounding box of its triangles.
        """
        tri = np.asarray(vertices, dtype=np.float32).reshape(-1, 3, vertices.shape[1])
        cell = np.floor(tri[:, :, :2].mean(axis=1) / tile_size).astype(np.int64)
        cell -= cell.min(axis=0)
        key = cell[:, 1] * (cell[:, 0].max() + 1) + cell[:, 0]
        order = np.argsort(key, kind="stable")
        tri, key = tri[order], key[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        xyz = tri[:, :, :3]
        self._tile_first = starts * 3
        self._tile_count = np.diff(np.r_[starts, len(tri)]) * 3
        self._tile_min = np.minimum.reduceat(xyz.min(axis=1), starts)
        self._tile_max = np.maximum.reduceat(xyz.max(axis=1), starts)
        vbo = self.ctx.buffer(np.ascontiguousarray(tri).tobytes())
        self._static_vao = self.ctx.vertex_array(
            self._static_prog, [(vbo, VERTEX_FORMAT, *VERTEX_ATTRIBUTES)], skip_errors=True
        )

    def add_actor_kind(
        self, name: str, template: np.ndarray, max_instances: int, max_distance: float = 1e9
    ) -> None:
        """Register an instanced actor mesh.

        Args:
            name: Kind name, used by :meth:`set_instances`.
            template: Vertex rows ``(V, VERTEX_FLOATS)`` in the actor's local frame.
            max_instances: Capacity of its instance buffer.
            max_distance: Instances farther than this from the camera are not drawn (they would
                cover a pixel or less), metres.
        """
        template = np.ascontiguousarray(template, dtype=np.float32)
        xyz = template[:, :3]
        center = 0.5 * (xyz.min(axis=0) + xyz.max(axis=0))
        radius = float(np.linalg.norm(xyz - center, axis=1).max()) * 1.15  # room for scale
        self._actors[name] = _ActorKind(template, max_instances, center, radius, max_distance)
        capacity = sum(k.capacity * len(k.template) for k in self._actors.values())
        self._actor_vbo = self.ctx.buffer(reserve=max(capacity, 1) * template.shape[1] * 4)
        self._actor_vao = self.ctx.vertex_array(
            self._static_prog,
            [(self._actor_vbo, VERTEX_FORMAT, *VERTEX_ATTRIBUTES)],
            skip_errors=True,
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
                color_attachments=[self.ctx.renderbuffer(key, 4)],
                depth_attachment=self.ctx.depth_renderbuffer(key),
            )
        return self._fbos[key]

    def _set_uniforms(self, lighting: Lighting, cam_pos: np.ndarray, viewproj: np.ndarray) -> None:
        values = {
            "u_sun_dir": lighting.sun_dir, "u_sun_color": lighting.sun_color,
            "u_zenith": lighting.zenith, "u_horizon": lighting.horizon,
            "u_sun_disc": lighting.sun_disc, "u_sky_amb": lighting.sky_ambient,
            "u_ground_amb": lighting.ground_ambient, "u_fog_color": lighting.fog_color,
            "u_fog_density": lighting.fog_density, "u_wet": lighting.wetness,
            "u_night": lighting.night, "u_cam_pos": cam_pos,
            # GL matrices are column-major: hand over the transpose's bytes
            "u_viewproj": viewproj.T.astype(np.float32).tobytes(),
        }  # fmt: skip
        for prog in (self._sky, self._static_prog):
            for key, value in values.items():
                if key in prog:
                    if isinstance(value, bytes):
                        prog[key].write(value)
                    else:
                        prog[key].value = tuple(np.atleast_1d(value).tolist()) if np.ndim(
                            value) else float(value)  # fmt: skip

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
        self._set_uniforms(lighting, cam_to_world[:3, 3], viewproj)
        ray = cam_to_world[:3, :3] @ np.linalg.inv(camera.K)
        self._sky["u_ray"].write(ray.T.astype(np.float32).tobytes())
        self._sky["u_height"].value = float(h)
        fbo = self._fbo(w, h)
        fbo.use()
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        ctx = self.ctx
        ctx.enable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
        ctx.depth_func = "<"
        cam_pos = cam_to_world[:3, 3]
        batch = [
            _pose_template(kind.template, rows[_spheres_visible(camera, world_to_cam, rows, kind)])
            for kind, rows in ((self._actors[k], self._instances[k]) for k in self._actors)
        ]
        batch = [b for b in batch if len(b)]
        if batch:
            vertices = np.concatenate(batch)
            self._actor_vbo.write(vertices.tobytes())
            self._static_prog["u_dynamic"].value = 1.0
            self._actor_vao.render(moderngl.TRIANGLES, vertices=len(vertices))
        if self._static_vao is not None:
            self._static_prog["u_dynamic"].value = 0.0
            # Visible tiles front to back, so the early depth test skips shading hidden surfaces
            # (a few dozen draw calls over tiles; objects are never looped over).
            visible = np.flatnonzero(_boxes_visible(viewproj, self._tile_min, self._tile_max))
            centre = 0.5 * (self._tile_min[visible] + self._tile_max[visible])
            visible = visible[np.argsort(np.linalg.norm(centre - cam_pos, axis=1))]
            for first, count in zip(
                self._tile_first[visible].tolist(), self._tile_count[visible].tolist(), strict=True
            ):
                self._static_vao.render(moderngl.TRIANGLES, vertices=count, first=first)
        # The sky last, at the far plane, only where nothing was drawn (early depth test skips
        # the covered pixels); it writes no depth, so sky pixels keep the cleared 1.0 -> depth 0.
        ctx.disable(moderngl.CULL_FACE)
        ctx.depth_func = "<="
        fbo.depth_mask = False
        self._sky_vao.render(moderngl.TRIANGLES, vertices=3)
        fbo.depth_mask = True
        rgba = np.frombuffer(fbo.read(components=4), dtype=np.uint8).reshape(h, w, 4)
        zbuf = np.frombuffer(
            fbo.read(components=1, attachment=-1, dtype="f4"), dtype=np.float32
        ).reshape(h, w)
        # GL rows run bottom-up; image rows top-down.
        rgba, zbuf = rgba[::-1], zbuf[::-1]
        rgb = np.ascontiguousarray(rgba[..., :3])
        dynamic = rgba[..., 3] > 127
        return rgb, linearize_depth(zbuf, self.near, self.far), dynamic

    def release(self) -> None:
        """Free GL objects and the context."""
        self.ctx.release()
