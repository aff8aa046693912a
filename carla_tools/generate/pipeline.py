"""The generator run: plan references and clips, render them (in worker processes), write.

Output folder (``docs/generate.md``)::

    citydb/                        the CityDB of reference captures (one-shard runs)
    citydb-shards/shard-I-of-N/    per-shard CityDBs of a sharded run (merged by ``stage=merge``)
    references/part-I-of-N.parquet per reference: panorama id, traversal, position, cell, split
    clips/                         the clip store (``docs/clips.md``)
    split.json                     the area split: cell size, seed, test cells

Parallelism: worker processes (spawn context) each open their own simulator and render; the
parent process is the single writer of the CityDB (views come back as arrays), while each worker
writes its finished clips straight into the clip store (clip folders are independent and are
renamed into place atomically).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from carla_tools.backends import make_simulator
from carla_tools.generate.clips import (
    ClipTask,
    clear_start_time,
    clip_meta,
    plan_clips,
    render_clip,
)
from carla_tools.generate.references import (
    NUM_VIEWS,
    ReferenceTask,
    reference_points,
    reference_tasks,
    view_poses,
)
from carla_tools.generate.settings import GenerateSettings, SimSettings
from carla_tools.generate.split import AreaSplit, cell_name
from carla_tools.generate.store import ClipStoreWriter
from carla_tools.generate.trajectories import LaneGraph
from cityenv.citydb.writer import CityDBWriter
from cityenv.geometry.camera import PinholeCamera

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a run did.

    Attributes:
        references: Reference captures in this shard's plan.
        references_rendered: Captures rendered now (the rest were already in the CityDB).
        clips: Clips in this shard's plan.
        clips_rendered: Clips rendered now.
        road_km: Road length of the network, km.
        seconds: Wall time per stage (``setup``, ``plan``, ``render``, ``index``, ``total``).
        worker_seconds: Time summed over workers per activity (``references``, ``clips``,
            ``clip_write``).
        renders: Pinhole views rendered now.
    """

    references: int = 0
    references_rendered: int = 0
    clips: int = 0
    clips_rendered: int = 0
    road_km: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    worker_seconds: dict[str, float] = field(default_factory=dict)
    renders: int = 0


@dataclass(frozen=True)
class Plan:
    """The work of one shard.

    Attributes:
        references: Reference captures of this shard.
        clips: Clips of this shard.
        split: The area split (with its forced test cell, if any).
        road_km: Road length of the network (every road once, whatever its lanes), km.
        cells: Area cells of all reference points (every shard's).
    """

    references: list[ReferenceTask]
    clips: list[ClipTask]
    split: AreaSplit
    road_km: float
    cells: list[tuple[int, int]]


# --- planning ----------------------------------------------------------------------------------
def make_plan(settings: GenerateSettings, network: Any) -> Plan:
    """Plan every reference capture and clip, then keep this shard's share.

    Deterministic in the settings and the network, so every shard of a cluster run computes the
    same full plan and takes items ``shard, shard + num_shards, ...`` of each list.
    """
    graph = LaneGraph.from_network(network)
    ref = settings.references
    points = reference_points(graph, ref.spacing_m, ref.camera_height, ref.dedupe_m)
    xy = np.array([p.position[:2] for p in points])
    split = AreaSplit(settings.cell_m, settings.seed, settings.test_fraction).with_a_test_cell(xy)
    refs = reference_tasks(points, list(ref.capture_times), ref.weather, split)
    c = settings.clips
    camera = PinholeCamera.from_fov(c.width, c.height, c.fov_deg)
    clips = plan_clips(
        graph, split, count=c.count, kinds=c.kinds, times=c.start_times, weathers=c.weathers,
        num_frames=c.num_frames, fps=c.fps, camera=camera, seed=settings.seed,
        time_jitter_s=c.time_jitter_s,
    )  # fmt: skip
    take = slice(settings.shard, None, settings.num_shards)
    cells = sorted({t.cell for t in refs})
    return Plan(refs[take], clips[take], split, graph.road_km(), cells)


# --- work items (run in a worker or inline) ----------------------------------------------------
_WORKER: dict[str, Any] = {}  # per worker process: its simulator (each process opens its own)


def _open_sim(sim: SimSettings) -> Any:
    options = dict(sim.options)
    if "blocks" in options:
        options["blocks"] = tuple(options["blocks"])
    return make_simulator(sim.backend, **options)


def _init_worker(sim: SimSettings, store_root: str) -> None:
    _WORKER["sim"] = _open_sim(sim)
    _WORKER["store"] = ClipStoreWriter(store_root)


def render_reference(sim: Any, task: ReferenceTask, camera: PinholeCamera) -> dict[str, Any]:
    """Render the views of one capture.

    Returns:
        ``{"task", "images", "depths", "poses", "camera"}``: lists of ``(H, W, 3)`` uint8 and
        ``(H, W)`` float32 arrays and camera-to-world poses, :data:`NUM_VIEWS` each.
    """
    sim.set_weather(task.weather)
    sim.set_time(task.time)
    poses = view_poses(task.point, NUM_VIEWS)
    frames = [sim.render(camera, pose) for pose in poses]
    return {
        "task": task,
        "images": [f[0] for f in frames],
        "depths": [f[1] for f in frames],
        "poses": poses,
        "camera": camera,
    }


def _do(item: tuple[str, Any, Any], sim: Any, store: ClipStoreWriter) -> tuple[str, Any, dict]:
    """Run one work item; returns ``(kind, result, seconds)``."""
    kind, task, extra = item
    t0 = time.perf_counter()
    if kind == "ref":
        return kind, render_reference(sim, task, extra), {"references": time.perf_counter() - t0}
    task = dataclasses.replace(task, start_time=clear_start_time(sim, task))
    rgb, depth, dynamic = render_clip(sim, task)
    t1 = time.perf_counter()
    store.write_clip(clip_meta(task, extra), rgb, depth, dynamic, task.trajectory)
    seconds = {"clips": t1 - t0, "clip_write": time.perf_counter() - t1}
    return kind, task.clip_id, seconds


def _worker_do(item: tuple[str, Any, Any]) -> tuple[str, Any, dict]:
    return _do(item, _WORKER["sim"], _WORKER["store"])


def _results(
    items: Sequence[tuple[str, Any, Any]], workers: int, sim: Any, settings: GenerateSettings
) -> Iterator[tuple[str, Any, dict]]:
    """Results of the work items, inline (``workers == 0``) or from a spawn-context pool."""
    store_root = str(settings.out / "clips")
    if workers <= 0 or not items:
        store = ClipStoreWriter(store_root)
        for item in items:
            yield _do(item, sim, store)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(settings.sim, store_root)) as pool:
        yield from pool.imap_unordered(_worker_do, items, chunksize=1)


# --- outputs -------------------------------------------------------------------------------------
def citydb_path(out: Path, shard: int, num_shards: int) -> Path:
    """Where a shard writes its CityDB (``out/citydb`` for a one-shard run)."""
    if num_shards == 1:
        return out / "citydb"
    return out / "citydb-shards" / f"shard-{shard:04d}-of-{num_shards:04d}"


def _write_reference_table(out: Path, tasks: list[ReferenceTask], shard: int, n: int) -> None:
    rows = [
        {
            "panorama_id": t.panorama_id,
            "traversal_id": t.traversal_id,
            "capture_time": t.time,
            "x": float(t.point.position[0]),
            "y": float(t.point.position[1]),
            "z": float(t.point.position[2]),
            "heading_deg": t.point.heading_deg,
            "lane": t.point.lane,
            "cell": cell_name(t.cell),
            "split": t.split,
        }
        for t in tasks
    ]
    folder = out / "references"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{shard:04d}-of-{n:04d}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def _write_split(out: Path, plan: Plan) -> None:
    info = {
        "cell_m": plan.split.cell_size,
        "seed": plan.split.seed,
        "test_fraction": plan.split.test_fraction,
        "forced_test": [cell_name(c) for c in sorted(plan.split.forced_test)],
        "cells": {cell_name(c): plan.split.split_of_cell(c) for c in plan.cells},
    }
    tmp = out / "split.json.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, out / "split.json")


# --- the run -------------------------------------------------------------------------------------
def _pending_items(
    plan: Plan, writer: CityDBWriter, store: ClipStoreWriter, settings: GenerateSettings, frame: Any
) -> list[tuple[str, Any, Any]]:
    ref_camera = PinholeCamera.from_fov(
        settings.references.size, settings.references.size, settings.references.fov_deg
    )
    refs = [
        ("ref", t, ref_camera) for t in plan.references if not writer.has_panorama(t.panorama_id)
    ]
    clips = [("clip", t, frame) for t in plan.clips if not store.has_clip(t.clip_id)]
    return refs + clips


def generate(settings: GenerateSettings) -> Summary:
    """Run (or resume) one shard of the generator.

    Reference captures already committed to the CityDB and clips already complete in the store
    are skipped, so rerunning after an interruption finishes the remaining work.

    Args:
        settings: The run's settings.

    Returns:
        Counts and timings of the run.
    """
    if not 0 <= settings.shard < settings.num_shards:
        raise ValueError(
            f"shard must lie in [0, num_shards={settings.num_shards}), got {settings.shard}."
        )
    t_start = time.perf_counter()
    summary = Summary()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    sim = _open_sim(settings.sim)
    try:
        frame = sim.frame
        summary.seconds["setup"] = time.perf_counter() - t_start
        t0 = time.perf_counter()
        plan = make_plan(settings, sim.road_network())
        summary.seconds["plan"] = time.perf_counter() - t0
        summary.references, summary.clips = len(plan.references), len(plan.clips)
        summary.road_km = plan.road_km
        if settings.workers > 0:  # the workers open their own; free this one's memory first
            sim.close()
            sim = None
        _run_items(settings, plan, frame, sim, summary)
    finally:
        if sim is not None:
            sim.close()
    summary.seconds["total"] = time.perf_counter() - t_start
    return summary


def _run_items(
    settings: GenerateSettings, plan: Plan, frame: Any, sim: Any, summary: Summary
) -> None:
    """Render the pending items, write references to the CityDB, then the indices."""
    out = Path(settings.out)
    store = ClipStoreWriter(out / "clips", anchor=frame)
    store.clean()
    path = citydb_path(out, settings.shard, settings.num_shards)
    t0 = time.perf_counter()
    with CityDBWriter(
        path, city=settings.city, frame=frame, image_format=settings.references.image_format,
        commit_every=50,
    ) as writer:  # fmt: skip
        items = _pending_items(plan, writer, store, settings, frame)
        bar_refs = tqdm(
            total=len(plan.references), desc="references", disable=not settings.progress
        )
        bar_clips = tqdm(total=len(plan.clips), desc="clips", disable=not settings.progress)
        bar_refs.update(len(plan.references) - sum(k == "ref" for k, _, _ in items))
        bar_clips.update(len(plan.clips) - sum(k == "clip" for k, _, _ in items))
        for kind, result, seconds in _results(items, settings.workers, sim, settings):
            for key, value in seconds.items():
                summary.worker_seconds[key] = summary.worker_seconds.get(key, 0.0) + value
            if kind == "ref":
                _add_reference(writer, result)
                summary.references_rendered += 1
                summary.renders += NUM_VIEWS
                bar_refs.update()
            else:
                summary.clips_rendered += 1
                summary.renders += settings.clips.num_frames
                bar_clips.update()
        bar_refs.close()
        bar_clips.close()
    summary.seconds["render"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _write_reference_table(out, plan.references, settings.shard, settings.num_shards)
    store.write_index([t.clip_id for t in plan.clips], settings.shard, settings.num_shards)
    _write_split(out, plan)
    summary.seconds["index"] = time.perf_counter() - t0


def _add_reference(writer: CityDBWriter, result: dict[str, Any]) -> None:
    task: ReferenceTask = result["task"]
    writer.add_panorama(
        panorama_id=task.panorama_id,
        images=result["images"],
        depths=result["depths"],
        cameras=result["camera"],
        poses=result["poses"],
        traversal_id=task.traversal_id,
        capture_time=task.time,
        source=task.source,
    )


def merge_shards(out: Path, city: str = "procedural-town", progress: bool = True) -> int:
    """Merge the per-shard CityDBs of a sharded run into ``out/citydb``.

    Panoramas already in the merged database are skipped, so the merge can be rerun.

    Returns:
        Number of panoramas added.
    """
    from cityenv.citydb.reader import CityDB

    shards = sorted((Path(out) / "citydb-shards").glob("shard-*"))
    if not shards:
        raise FileNotFoundError(f"expected shard CityDBs under {out}/citydb-shards, found none.")
    added = 0
    for shard in shards:
        db = CityDB.open(shard)
        with CityDBWriter(Path(out) / "citydb", city=city, frame=db.frame) as writer:
            table = db.panoramas.to_pydict()
            ids = table["panorama_id"]
            for p in tqdm(range(len(ids)), desc=shard.name, disable=not progress):
                if writer.has_panorama(ids[p]):
                    continue
                views = db.panorama_views(np.array([table["panorama_index"][p]]))[0]
                loaded = [db.load_view(int(v)) for v in views]
                writer.add_panorama(
                    panorama_id=ids[p],
                    images=[v.image for v in loaded],
                    depths=[v.depth for v in loaded],
                    cameras=[v.camera for v in loaded],
                    poses=[v.pose for v in loaded],
                    traversal_id=loaded[0].metadata.traversal_id,
                    capture_time=loaded[0].metadata.capture_time,
                    source=loaded[0].metadata.source,
                )
                added += 1
        db.close()
    return added


def summary_json(summary: Summary) -> str:
    """The summary as pretty JSON (times rounded to 0.01 s)."""
    data = asdict(summary)
    for key in ("seconds", "worker_seconds"):
        data[key] = {k: round(v, 2) for k, v in data[key].items()}
    data["road_km"] = round(data["road_km"], 3)
    return json.dumps(data, indent=1)
