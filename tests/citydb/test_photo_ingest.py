"""Ingestion of geotagged perspective photos: a sequence rendered from the built-in town.

The town gives the truth: each photo is rendered at a known pose with known depth, written as a
JPEG with EXIF GPS (noisy), time and 35 mm-equivalent focal length, and optionally distorted by a
known lens. Ingestion must recover positions, headings and depth within the stated tolerances, and
the environment must run on the resulting database.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image

from cityenv.citydb.photos import DEPTH_SOURCES, ingest_photos
from cityenv.citydb.photos.records import FULL_FRAME_DIAGONAL_MM
from cityenv.citydb.reader import CityDB
from cityenv.errors import DepthlessViewWarning, DepthModelError, IngestError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose

pytest.importorskip("moderngl")  # the town renders through headless EGL

T0 = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)  # noon in Seoul
SIZE = (320, 240)  # photo size, pixels
FOV = 70.0
STEP = 2  # lane waypoints (about 2 m apart) between photos
DISTORTION = (-0.08, 0.02, 0.0, 0.0, 0.0)  # OpenCV k1, k2, p1, p2, k3: mild barrel
GPS_SIGMA_M = 0.3
WOBBLE_DEG = 10.0
ALTITUDE = 30.0  # metres above sea level of the first photo's camera
ROOT = Path(__file__).resolve().parents[2]


def _dms(value: float) -> tuple[float, float, float]:
    value = abs(value)
    d = math.floor(value)
    m = math.floor((value - d) * 60)
    return float(d), float(m), (value - d - m / 60) * 3600


def write_geotagged_jpeg(
    path: Path,
    rgb: np.ndarray,
    *,
    lat: float | None,
    lon: float | None,
    altitude: float | None,
    when: datetime | None,
    focal_35mm: float | None,
    compass: float | None = None,
    make: str = "cityenv",
) -> None:
    """A JPEG with EXIF GPS, capture time (+ offset) and focal length, through Pillow's Exif API."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = make
    exif[ExifTags.Base.Model] = "town-cam"
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    if focal_35mm is not None:
        sub[ExifTags.Base.FocalLengthIn35mmFilm] = int(round(focal_35mm))
        sub[ExifTags.Base.FocalLength] = 4.0
    if when is not None:
        local = when.astimezone(timezone(timedelta(hours=9)))
        sub[ExifTags.Base.DateTimeOriginal] = local.strftime("%Y:%m:%d %H:%M:%S")
        sub[ExifTags.Base.OffsetTimeOriginal] = "+09:00"
    if lat is not None:
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        gps[1], gps[2] = ("N" if lat >= 0 else "S"), _dms(lat)
        gps[3], gps[4] = ("E" if lon >= 0 else "W"), _dms(lon)
        if altitude is not None:
            gps[5], gps[6] = b"\x00", float(altitude)
        if compass is not None:
            gps[16], gps[17] = "T", float(compass)
    Image.fromarray(rgb).save(path, quality=95, exif=exif)


def distort(rgb: np.ndarray, camera: PinholeCamera, coefficients) -> np.ndarray:
    """What a lens with OpenCV ``coefficients`` records of a pinhole image ``(H, W, 3)``."""
    cols, rows = np.meshgrid(np.arange(camera.width) + 0.5, np.arange(camera.height) + 0.5)
    pixels = np.stack([cols, rows], -1).reshape(-1, 1, 2).astype(np.float64)
    # each distorted pixel shows the scene point whose pinhole pixel undistortPoints returns
    ideal = cv2.undistortPoints(pixels, camera.K, np.asarray(coefficients), P=camera.K)
    ideal = ideal.reshape(camera.height, camera.width, 2).astype(np.float32) - 0.5
    return cv2.remap(rgb, ideal[..., 0], ideal[..., 1], cv2.INTER_LINEAR)


def focal_35mm(camera: PinholeCamera) -> float:
    """The 35 mm-equivalent focal length of ``camera`` (diagonal convention)."""
    return camera.fx * FULL_FRAME_DIAGONAL_MM / math.hypot(camera.width, camera.height)


def render_sequence(
    folder: Path, *, count: int, seed: int = 0, lens=DISTORTION, sigma=GPS_SIGMA_M, look_deg=0.0
):
    """Render ``count`` photos along a town lane; returns the truth (poses, depths, camera)."""
    from carla_tools.town.town import ProceduralTown

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    camera = PinholeCamera.from_fov(*SIZE, FOV)
    # EXIF keeps an integer 35 mm focal length: the truth camera is the one EXIF describes
    f35 = round(focal_35mm(camera))
    camera = PinholeCamera.from_fov(*SIZE, 2 * math.degrees(math.atan(SIZE[0] / 2 / (
        f35 * math.hypot(*SIZE) / FULL_FRAME_DIAGONAL_MM))))  # fmt: skip
    truth = []
    with ProceduralTown(seed=3, blocks=(1, 1), vehicle_density=0, pedestrian_density=0) as town:
        town.set_time(T0)
        lanes = [ln for ln in town.road_network().lanes if ln.entry >= 0 and ln.exit >= 0]
        lane = max(lanes, key=lambda ln: np.linalg.norm(ln.waypoints[-1] - ln.waypoints[0]))
        for k in range(count):
            i = k * STEP
            d = lane.waypoints[i + 1] - lane.waypoints[i]
            # a hand-held camera wobbles about the direction of travel (and SfM needs parallax)
            heading = math.degrees(math.atan2(d[0], d[1])) + look_deg + WOBBLE_DEG * (k % 3 - 1)
            heading %= 360
            pose = Pose.from_heading(lane.waypoints[i] + [0, 0, 1.6], heading)
            rgb, depth, _ = town.render(camera, pose)
            noisy = pose.position + np.r_[rng.normal(0, sigma, 2), rng.normal(0, 2 * sigma)]
            lat, lon, h = town.frame.enu_to_geodetic(noisy)
            photo = distort(rgb, camera, lens) if lens is not None else rgb
            write_geotagged_jpeg(
                folder / f"IMG_{k:04d}.jpg",
                photo,
                lat=float(lat),
                lon=float(lon),
                altitude=float(h) - town.frame.height + ALTITUDE,
                when=T0 + timedelta(seconds=2 * k),
                focal_35mm=f35,
            )
            truth.append({"pose": pose, "depth": depth, "rgb": rgb})
        frame = town.frame
    return truth, camera, frame


# --- a textured street for structure from motion ------------------------------------------
# The town's flat-shaded, repetitive facades give SIFT too little to hold a reconstruction (the
# GPS-alignment gate rejects it, see test_sfm_on_the_town_is_rejected_not_trusted); a street of
# noise-textured walls and ground, ray-cast exactly, has known poses and depth and real texture.
STREET_HALF_WIDTH = 6.0


def _noise_texture(rng: np.random.Generator, size: int = 1024) -> np.ndarray:
    """Multi-scale noise ``(size, size)`` float32 in [0, 1]: corners at every SIFT scale."""
    out = np.zeros((size, size), np.float32)
    for cells in (16, 64, 256):
        grid = rng.random((cells, cells)).astype(np.float32)
        out += cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return (out - out.min()) / np.ptp(out)


def render_street(camera: PinholeCamera, pose: Pose, textures: list[np.ndarray]):
    """RGB ``(H, W, 3)`` and z-depth ``(H, W)`` of a corridor along north (walls at x = +-6 m)."""
    rays = camera.pixel_rays().reshape(-1, 3)  # camera frame, z = 1
    d = rays @ pose.rotation_matrix.T
    c = pose.position
    with np.errstate(divide="ignore", invalid="ignore"):
        hits = np.stack(
            [
                np.where(d[:, 0] < 0, (-STREET_HALF_WIDTH - c[0]) / d[:, 0], np.inf),
                np.where(d[:, 0] > 0, (STREET_HALF_WIDTH - c[0]) / d[:, 0], np.inf),
                np.where(d[:, 2] < 0, -c[2] / d[:, 2], np.inf),
            ]
        )
    plane = hits.argmin(0)
    t = hits.min(0)
    point = c + t[:, None] * d
    uv = (
        np.where(plane[:, None] == 2, point[:, [0, 1]], point[:, [1, 2]]) * 20.0
    )  # 5 cm texels: the texture repeats every 51 m
    rgb = np.zeros((len(t), 3), np.float32)
    tints = np.array([[1.0, 0.8, 0.6], [0.6, 0.8, 1.0], [0.7, 0.7, 0.7]], np.float32)
    for k, texture in enumerate(textures):
        sel = plane == k
        size = texture.shape[0]
        u = np.mod(uv[sel, 0], size).astype(np.float32)[:, None]
        v = np.mod(uv[sel, 1], size).astype(np.float32)[:, None]
        value = cv2.remap(texture, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)[:, 0]
        rgb[sel] = value[:, None] * tints[k] * 255
    far = ~np.isfinite(t) | (t > 150)
    rgb[far], t[far] = (150, 190, 240), 0.0
    shape = camera.shape
    return rgb.reshape(*shape, 3).astype(np.uint8), t.reshape(shape).astype(np.float32)


def street_sequence(folder: Path, *, count: int = 8, sigma: float = GPS_SIGMA_M, seed: int = 0):
    """Photos walking north along the street (small wobble), JPEG + EXIF; returns the truth."""
    from cityenv.geometry.geodesy import LocalFrame

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    textures = [_noise_texture(rng) for _ in range(3)]
    frame = LocalFrame(37.5665, 126.978, 30.0)
    camera = PinholeCamera(320, 240, fx=220.0, fy=220.0, cx=160.0, cy=120.0)
    truth = []
    for k in range(count):
        pose = Pose.from_heading([1.0 * (k % 2), 2.5 * k, 1.6], 6.0 * (k % 3 - 1))
        rgb, depth = render_street(camera, pose, textures)
        noisy = pose.position + np.r_[rng.normal(0, sigma, 2), rng.normal(0, 2 * sigma)]
        lat, lon, h = frame.enu_to_geodetic(noisy)
        write_geotagged_jpeg(
            folder / f"S_{k:03d}.jpg",
            rgb,
            lat=float(lat),
            lon=float(lon),
            altitude=float(h),
            when=T0 + timedelta(seconds=k),
            focal_35mm=focal_35mm(camera),
        )
        truth.append({"pose": pose, "depth": depth, "rgb": rgb})
    return truth, camera, frame


def _heading_error(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _depth_error(stored: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Coverage of the truth's valid pixels and the median relative error there."""
    both = (stored > 0) & (truth > 0)
    rel = np.abs(stored[both] - truth[both]) / truth[both]
    return float(both.sum() / max((truth > 0).sum(), 1)), float(
        np.median(rel)
    ) if both.any() else 1.0


# --- the town: GPS + motion headings, undistortion, then the environment ---------------------
@pytest.fixture(scope="module")
def town_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("town") / "photos"
    truth, camera, frame = render_sequence(folder, count=10)
    return folder, truth, camera, frame


@pytest.fixture(scope="module")
def tiny_depth_anything(tmp_path_factory) -> Path:
    """A Depth Anything V2 metric model of the real architecture with random tiny weights."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="metric",
        max_depth=80,
    )
    folder = tmp_path_factory.mktemp("depth-anything")
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    return folder


def test_town_photos_give_gps_positions_motion_headings_and_pinhole_views(town_photos, tmp_path):
    folder, truth, camera, frame = town_photos
    with pytest.warns(DepthlessViewWarning, match=r"10 views were stored without depth .*sink"):
        report = ingest_photos(
            folder, tmp_path / "db", city="town", frame=frame, geoid=frame.height - ALTITUDE,
            progress=False,
        )  # fmt: skip
    assert (report.photos, report.added, len(report.skipped), report.without_depth) == (
        10,
        10,
        0,
        10,
    )
    assert "undulation of -30.0 m" in report.summary()
    db = CityDB.open(tmp_path / "db")
    assert len(db) == 10 and len(set(db.metadata(i).traversal_id for i in range(10))) == 1
    for i in range(10):
        view = db.load_view(i)
        k = int(view.metadata.panorama_id[4:8])
        pose = truth[k]["pose"]
        # GPS noise sigma 0.3 m horizontal, 0.6 m vertical: within 4 sigma
        assert np.linalg.norm(view.pose.position[:2] - pose.position[:2]) < 1.2
        assert abs(view.pose.position[2] - pose.position[2]) < 2.4
        # motion gives the direction of travel: off by the hand-held wobble (+-10 deg) + 3 deg
        assert _heading_error(view.pose.heading_deg, pose.heading_deg) < WOBBLE_DEG + 3.0
        if k % 3 == 1:  # no wobble: the direction of travel is the heading
            assert _heading_error(view.pose.heading_deg, pose.heading_deg) < 3.0
        # the 35 mm-equivalent focal length gives fx
        assert view.camera.shape == camera.shape and view.camera.fx == pytest.approx(camera.fx)
        assert view.metadata.capture_time == T0 + timedelta(seconds=2 * k)  # +09:00 -> UTC


# --- heights through a geoid grid that PROJ reads --------------------------------------------
UNDULATION_M = 25.0  # the synthetic geoid's constant N (about Seoul's real one)


def write_gtx(path: Path, undulation_m: float, step_deg: float = 10.0) -> None:
    """A world-wide GTX geoid grid of constant ``undulation_m``: PROJ's vertical grid format.

    40-byte big-endian header (south lat, west lon, lat step, lon step as float64; rows, cols as
    int32), then rows x cols big-endian float32 undulations, south row first.
    """
    rows, cols = int(180 / step_deg) + 1, int(360 / step_deg) + 1
    header = struct.pack(">4d2i", -90.0, -180.0, step_deg, step_deg, rows, cols)
    path.write_bytes(header + np.full((rows, cols), undulation_m, ">f4").tobytes())


def _exif_altitude(path: Path) -> float:
    gps = Image.open(path).getexif().get_ifd(ExifTags.IFD.GPSInfo)
    return float(gps[6]) * (-1.0 if gps.get(5) == b"\x01" else 1.0)


@pytest.fixture
def geoid_grid(tmp_path, monkeypatch):
    """An EGM96 grid (old GTX name) in a folder added to PROJ's search path, removed after.

    The user data folder is pointed at an empty folder so a real grid installed on the machine
    cannot answer instead; both are restored (and PROJ's context re-read) afterwards.
    """
    import pyproj.datadir

    grids, empty = tmp_path / "grids", tmp_path / "user-proj"
    grids.mkdir(), empty.mkdir()
    write_gtx(grids / "egm96_15.gtx", UNDULATION_M)
    before = pyproj.datadir.get_data_dir()
    monkeypatch.setenv("PROJ_USER_WRITABLE_DIRECTORY", str(empty))
    pyproj.datadir.append_data_dir(str(grids))
    try:
        yield grids / "egm96_15.gtx"
    finally:
        monkeypatch.undo()
        pyproj.datadir.set_data_dir(before)


def test_altitudes_go_through_an_installed_geoid_grid(town_photos, geoid_grid, tmp_path):
    """Heights = EXIF altitude + the grid's undulation; the summary names the grid file."""
    from cityenv.citydb.photos import GeoidModel

    folder, _, _, frame = town_photos
    with pytest.warns(DepthlessViewWarning):
        report = ingest_photos(folder, tmp_path / "db", city="town", frame=frame, progress=False)
    assert f"EGM96 geoid (pyproj, grid {geoid_grid})" in report.summary()
    db = CityDB.open(tmp_path / "db")
    assert len(db) == 10
    for i in range(len(db)):
        meta = db.metadata(i)
        altitude = _exif_altitude(folder / meta.panorama_id)
        assert meta.height == pytest.approx(altitude + UNDULATION_M, abs=1e-3)
    # the grid gave the 25 m: without its folder the altitudes are taken as ellipsoidal heights
    import pyproj.datadir

    pyproj.datadir.set_data_dir(pyproj.datadir.get_data_dir().split(os.pathsep)[0])
    h, note = GeoidModel().to_ellipsoidal(np.array([37.5]), np.array([127.0]), np.array([10.0]))
    assert h[0] == 10.0 and note.startswith("no geoid grid is installed")


def test_the_user_data_folder_variable_points_the_cli_at_a_grid(tmp_path):
    """``PROJ_USER_WRITABLE_DIRECTORY`` (documented for the command line) makes PROJ find it."""
    write_gtx(tmp_path / "egm96_15.gtx", UNDULATION_M)
    code = (
        "import json; from cityenv.citydb.photos import GeoidModel; "
        "h, note = GeoidModel().to_ellipsoidal([37.5], [127.0], [10.0]); "
        "print(json.dumps([float(h[0]), note]))"
    )
    env = {**os.environ, "PROJ_USER_WRITABLE_DIRECTORY": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    h, note = json.loads(out.stdout)
    assert h == pytest.approx(10.0 + UNDULATION_M) and str(tmp_path / "egm96_15.gtx") in note


def test_a_photo_csv_adds_the_lens_and_the_views_are_undistorted(town_photos, tmp_path):
    """EXIF has no distortion field: a CSV (UTF-8 with a BOM, as spreadsheets save it) gives it."""
    folder, truth, camera, frame = town_photos
    lines = ["image,k1,k2,p1,p2,k3,sequence"]
    lines += [f"IMG_{k:04d}.jpg,{','.join(map(str, DISTORTION))},walk-1" for k in range(10)]
    (folder / "lens.csv").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    with pytest.warns(DepthlessViewWarning):
        report = ingest_photos(
            folder / "lens.csv", tmp_path / "db", city="t", frame=frame, progress=False
        )
    assert report.added == 10 and list(report.traversals) == ["seq:walk-1"]
    db = CityDB.open(tmp_path / "db")
    inner = np.s_[8:-8, 8:-8]  # the lens displaces pixels most near the edges
    for i in range(len(db)):
        view = db.load_view(i)
        k = int(view.metadata.panorama_id[4:8])
        photo = np.asarray(Image.open(folder / f"IMG_{k:04d}.jpg"), dtype=np.float32)
        stored_err = np.abs(view.image.astype(np.float32) - truth[k]["rgb"])[inner].mean()
        photo_err = np.abs(photo - truth[k]["rgb"])[inner].mean()
        # the stored view matches the pinhole render far better than the distorted photo does
        assert stored_err < 0.6 * photo_err, (stored_err, photo_err)


def test_views_without_depth_serve_only_as_the_sink(town_photos, tiny_depth_anything, tmp_path):
    """Stage 2 needs depth: depthless views are never references, but can be the sink."""
    from cityenv.citydb.retrieval import Retriever

    folder, truth, camera, frame = town_photos
    options = {"city": "town", "frame": frame, "progress": False}
    with pytest.warns(DepthlessViewWarning):
        ingest_photos(folder, tmp_path / "bare", **options)
    tiny = {"model": tiny_depth_anything, "align": "none", "input_size": 56}
    ingest_photos(folder, tmp_path / "deep", depth="depth-anything", depth_options=tiny, **options)
    chunk = [truth[k]["pose"] for k in (3, 4, 5)]
    bare = Retriever(CityDB.open(tmp_path / "bare")).retrieve(chunk, camera)
    assert bare.empty and bare.references == [] and bare.sink is not None
    deep = Retriever(CityDB.open(tmp_path / "deep")).retrieve(chunk, camera)
    assert not deep.empty and len(deep.references) > 0


def test_a_rerun_skips_photos_already_stored(town_photos, tmp_path):
    folder, _, _, frame = town_photos
    options = {"city": "town", "frame": frame, "progress": False}
    with pytest.warns(DepthlessViewWarning):
        ingest_photos(folder, tmp_path / "db", **options)
    again = ingest_photos(folder, tmp_path / "db", **options)
    assert (again.added, again.already_present) == (0, 10)
    assert len(CityDB.open(tmp_path / "db")) == 10


def test_sfm_on_the_town_is_rejected_or_skipped_and_gps_poses_kept(town_photos, tmp_path):
    """The flat-shaded town defeats SIFT: no model, or a wrong one that the GPS gate rejects."""
    folder, truth, _, frame = town_photos
    with pytest.warns(DepthlessViewWarning):
        report = ingest_photos(
            folder, tmp_path / "db", city="town", frame=frame, refine="sfm", progress=False
        )
    (outcome,) = report.sfm.values()
    assert re.search(r"SfM (rejected: GPS alignment residual|registered too few)", outcome), outcome
    db = CityDB.open(tmp_path / "db")
    for i in range(len(db)):
        k = int(db.metadata(i).panorama_id[4:8])
        assert np.linalg.norm(db.pose(i).position[:2] - truth[k]["pose"].position[:2]) < 1.2


def test_the_environment_runs_on_ingested_photos(town_photos, tiny_depth_anything, tmp_path):
    """An episode starts at an ingested view, drives along the photos' street, and every frame
    is drawn from the ingested views (references retrieved, not blank)."""
    import gymnasium as gym

    import cityenv  # noqa: F401  (registers the IDs)

    folder, _, _, frame = town_photos
    report = ingest_photos(
        folder, tmp_path / "db", city="town", frame=frame, progress=False,
        depth="depth-anything",
        depth_options={"model": tiny_depth_anything, "align": "none", "input_size": 56},
    )  # fmt: skip
    assert report.without_depth == 0
    db = CityDB.open(tmp_path / "db")
    ingested = {db.metadata(i).panorama_id for i in range(len(db))}
    first = next(i for i in range(len(db)) if db.metadata(i).panorama_id == "IMG_0001.jpg")
    start = db.pose(first)
    env = gym.make(
        "CityWorld-Seoul-v0", city_db=db, width=64, height=64, full_info=True, chunk_length=4
    )
    try:
        obs, info = env.reset(seed=0, options={"start": start})
        # the start is the view's place and heading (at street height)
        assert np.linalg.norm(obs["pose"][:2] - start.position[:2]) < 1e-3
        assert _heading_error(info["pose"].heading_deg, start.heading_deg) < 1e-3
        assert info["references_used"] > 0
        for _ in range(3):  # straight ahead, along the photographed lane
            obs, reward, terminated, truncated, info = env.step(0)
            assert np.isfinite(reward)
            assert info["references_used"] > 0
            references = info["retrieval"].references
            # the photos taken along this stretch of the lane (a few metres away) are the ones used
            used = {db.metadata(r.view_id).panorama_id for r in references}
            assert used and used <= ingested, used
            assert min(r.distance for r in references) < 3.0  # photos are 4 m apart
            frames = obs["frames"]
            assert frames.shape == (64, 64, 3)
            # drawn from the photos: mostly covered, with texture (not one flat colour)
            assert (frames.max(-1) > 0).mean() > 0.5 and frames.std() > 5.0
        assert info["metres_travelled"] > 3.0
    finally:
        env.close()


# --- structure from motion and depth on the textured street ----------------------------------
@pytest.fixture(scope="module")
def street_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("street") / "photos"
    truth, camera, frame = street_sequence(folder, count=8)
    return folder, truth, camera, frame


def test_sfm_refines_poses_to_the_truth_and_densifies_depth(street_photos, tmp_path):
    folder, truth, camera, frame = street_photos
    report = ingest_photos(
        folder, tmp_path / "db", city="street", frame=frame, refine="sfm", depth="sfm",
        progress=False,
    )  # fmt: skip
    (traversal,) = report.traversals
    # GPS noise of 0.3 m per horizontal axis and 0.6 m vertical is 0.73 m in 3-D: the
    # alignment residual measures it (and is reported)
    assert 0.3 < report.sfm_residual_m[traversal] < 1.2
    assert "GPS alignment residual RMS" in report.summary()
    assert report.without_depth == 0
    db = CityDB.open(tmp_path / "db")
    first = db.pose(0).heading_deg - truth[0]["pose"].heading_deg
    for i in range(len(db)):
        view = db.load_view(i)
        k = int(view.metadata.panorama_id[2:5])
        pose = truth[k]["pose"]
        # the GPS alignment fixes the whole track to about sigma / length (0.3 m / 17.5 m = 1
        # deg); within it SfM recovers what GPS and motion cannot: the wobble of each heading
        assert np.linalg.norm(view.pose.position - pose.position) < 0.35
        assert _heading_error(view.pose.heading_deg, pose.heading_deg) < 3.5
        assert _heading_error(view.pose.heading_deg - first, pose.heading_deg) < 0.5
        assert abs(view.pose.pitch_deg - pose.pitch_deg) < 1.0
        coverage, median_rel = _depth_error(view.depth, truth[k]["depth"])
        assert coverage > 0.2 and median_rel < 0.06, (coverage, median_rel)


def test_depth_anything_is_scale_aligned_to_sfm(street_photos, tiny_depth_anything, tmp_path):
    from cityenv.citydb.photos import DepthView, SparseDepth, make_depth_source

    folder, truth, camera, frame = street_photos
    source = make_depth_source("depth-anything", model=tiny_depth_anything, input_size=56)
    raw = source.predict(truth[0]["rgb"])
    assert raw.shape == camera.shape and raw.dtype == np.float32 and np.all(raw > 0)
    # sparse metric points: the prediction is scaled so that it agrees with them at the median
    rows, cols = np.mgrid[10:230:20, 10:310:20].reshape(2, -1)
    uv = np.stack([cols + 0.5, rows + 0.5], 1)
    sparse = SparseDepth(uv, truth[0]["depth"][rows, cols])
    (aligned,) = source([DepthView(truth[0]["rgb"], camera, sparse)])
    ratio = sparse.z / aligned[rows, cols]
    assert np.median(ratio) == pytest.approx(1.0, abs=1e-3)
    assert source.scales[0] == pytest.approx(np.median(sparse.z / raw[rows, cols]), rel=1e-4)
    report = ingest_photos(
        folder, tmp_path / "db", city="street", frame=frame, refine="sfm",
        depth="depth-anything", depth_options={"model": tiny_depth_anything, "input_size": 56},
        progress=False,
    )  # fmt: skip
    assert report.added == 8 and report.without_depth == 0


def test_depth_sources_are_a_registry(tmp_path):
    assert {"none", "sfm", "depth-anything"} <= set(DEPTH_SOURCES.names())
    with pytest.raises(DepthModelError, match=r"Did you mean 'depth-anything'\?"):
        ingest_photos(tmp_path, tmp_path / "db", depth="depth-anythin")
    with pytest.raises(
        DepthModelError, match=r"expected a Depth Anything model folder .* no folder"
    ):
        ingest_photos(tmp_path, tmp_path / "db", depth="depth-anything",
                      depth_options={"model": tmp_path / "nowhere"})  # fmt: skip
    with pytest.raises(IngestError, match=r"needs the SfM reconstruction, got refine='none'"):
        ingest_photos(tmp_path, tmp_path / "db", depth="sfm")
    assert not (tmp_path / "db").exists()


def test_a_relative_depth_model_is_refused(tiny_depth_anything, tmp_path):
    config = json.loads((tiny_depth_anything / "config.json").read_text())
    config["depth_estimation_type"] = "relative"
    relative = tmp_path / "relative"
    relative.mkdir()
    (relative / "config.json").write_text(json.dumps(config))
    (relative / "model.safetensors").symlink_to(tiny_depth_anything / "model.safetensors")
    with pytest.raises(DepthModelError, match=r"expected a metric Depth Anything model"):
        ingest_photos(tmp_path, tmp_path / "db", depth="depth-anything",
                      depth_options={"model": relative})  # fmt: skip
