"""The tests only a simulator can give, run by ``python -m cityenv.eval``: prompt adherence and
long routes, on ground-truth renders of the bench's world (:mod:`cityenv.eval.render`).

Both need a ground-truth renderer of the world the bench's CityDB shows: Town-Bench's is the
built-in town (``renderer=town`` with the bench's seed and blocks); a user's own city has none, so
both are reported as not computed there. Each row's results go to ``world/<row>/`` in the run
folder (``adherence.json`` + the confusion matrix ``adherence.png``; ``long_route.json`` + the
metric over distance ``long_route.png``) and to a section of ``report.md``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cityenv.citydb.roadgraph import RoadGraph
from cityenv.geometry.camera import PinholeCamera

__all__ = ["WorldTestsConfig", "run_world_tests", "world_markdown"]


@dataclass
class WorldTestsConfig:
    """Prompt adherence and long routes (``docs/benchmark.md``)."""

    adherence: bool = False
    """Prompt adherence: routes rendered under several conditions, generated with each prompt."""
    long_route: bool = False
    """A long route rolled out and scored per segment (drift, colour, sharpness)."""
    renderer: str | None = None
    """Ground-truth renderer (default: the bench's provider, ``town`` for Town-Bench)."""
    renderer_options: dict[str, Any] = field(default_factory=dict)
    """Its options (default: the bench provider's ``seed`` and ``blocks``)."""
    conditions: list[str] = field(default_factory=list)
    """Conditions prompted in the adherence test (default: all but clear noon, the references')."""
    routes: int = 3
    """Adherence routes."""
    route_m: float = 40.0
    """Length of each adherence route, metres."""
    long_route_m: float = 1000.0
    """Length of the long route, metres."""
    segment_m: float = 100.0
    """Segments of the long route, metres."""
    size: list[int] = field(default_factory=lambda: [96, 72])
    """``[width, height]`` of the rendered and generated frames (multiples of 16 for presets that
    need them: use e.g. [96, 80] or [128, 128] for the diffusion rows)."""
    seed: int = 0


def run_world_tests(
    cfg: WorldTestsConfig, out: Path, rows: list[Any], spec: Any, citydb: Path, chunk_of: Any
) -> None:
    """Run the enabled tests for every row and write ``world/<row>/*.json|png``.

    Args:
        cfg: What to run.
        out: The run folder.
        rows: The eval rows (``.name``, ``.model``).
        spec: The bench spec (``provider``, ``provider_options``, ``num_references``).
        citydb: The bench's CityDB folder.
        chunk_of: ``row -> chunk length`` (the warp row's is the bench's).
    """
    if not (cfg.adherence or cfg.long_route):
        return
    from cityenv.eval.adherence import evaluate_adherence, plot_adherence
    from cityenv.eval.longroute import (
        RouteReferences,
        evaluate_long_route,
        plan_route,
        plot_long_route,
    )
    from cityenv.eval.render import open_renderer

    name = cfg.renderer or spec.provider
    folder = out / "world"
    if name is None:
        folder.mkdir(parents=True, exist_ok=True)
        reason = "no ground-truth renderer for this bench (give world.renderer=NAME)"
        (folder / "skipped.json").write_text(json.dumps({"reason": reason}) + "\n")
        return
    options = dict(cfg.renderer_options) or _town_options(spec)
    references = RouteReferences(citydb, num_references=spec.num_references)
    graph = RoadGraph.from_citydb(references.db, link_radius_m=20.0)
    camera = PinholeCamera.from_fov(int(cfg.size[0]), int(cfg.size[1]), 90.0)
    with contextlib.closing(open_renderer(name, options)) as renderer:
        for row in rows:
            chunk = chunk_of(row)
            target = folder / row.name
            target.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(cfg.seed)
            if cfg.adherence and not (target / "adherence.json").is_file():
                routes = [
                    plan_route(graph, cfg.route_m, rng=rng, chunk_frames=chunk).trajectory
                    for _ in range(cfg.routes)
                ]
                result = evaluate_adherence(
                    row.model, routes, camera, renderer, references,
                    conditions=list(cfg.conditions) or None, chunk_frames=chunk, seed=cfg.seed,
                )  # fmt: skip
                _plot(plot_adherence, result, target / "adherence.png")
                _write(target / "adherence.json", result.as_dict())
            if cfg.long_route and not (target / "long_route.json").is_file():
                route = plan_route(graph, cfg.long_route_m, rng=rng, chunk_frames=chunk)
                result = evaluate_long_route(
                    row.model, route, camera, renderer, references, chunk_frames=chunk,
                    segment_m=cfg.segment_m, seed=cfg.seed,
                )  # fmt: skip
                _plot(plot_long_route, result, target / "long_route.png")
                _write(target / "long_route.json", result.as_dict())


def _town_options(spec: Any) -> dict[str, Any]:
    given = dict(spec.provider_options or {})
    return {"seed": int(given.get("seed", 0)), "blocks": list(given.get("blocks", [2, 2]))}


def _plot(plot: Any, result: Any, path: Path) -> None:
    with contextlib.suppress(ModuleNotFoundError):  # no matplotlib: the numbers still count
        plot(result, path)


def _write(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_plain(value), indent=1) + "\n")
    tmp.replace(path)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def world_markdown(out: Path) -> str:
    """The report's sections for ``world/<row>/`` results ("" when there are none)."""
    folder = out / "world"
    if not folder.is_dir():
        return ""
    lines: list[str] = []
    skipped = folder / "skipped.json"
    if skipped.is_file():
        reason = json.loads(skipped.read_text())["reason"]
        return f"\n## Prompt adherence and long routes\n\nNot computed: {reason}.\n"
    adherence = sorted(folder.glob("*/adherence.json"))
    if adherence:
        lines += [
            "", "## Prompt adherence", "",
            "Routes rendered under each condition; each generated with that condition's prompt "
            "from clear-noon references; how often the clip is closest to its own condition's "
            "ground truth (by Lab colour statistics and by static PSNR).", "",
            "| row | conditions | trials | accuracy (colour) | accuracy (PSNR) | chance |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]  # fmt: skip
        for path in adherence:
            r = json.loads(path.read_text())
            lines.append(
                f"| {path.parent.name} | {', '.join(r['conditions'])} | {len(r['trials'])} | "
                f"{r['accuracy_colour']:.2f} | {r['accuracy_psnr']:.2f} | {r['chance']:.2f} |"
            )
    routes = sorted(folder.glob("*/long_route.json"))
    if routes:
        lines += [
            "", "## Long route", "",
            "One route rolled out chunk by chunk from its first ground-truth frame; static PSNR of "
            "the first and last segments, and the share of segments whose colour and sharpness "
            "lie inside the ground truth's range.", "",
            "| row | length (m) | segments | static PSNR first | static PSNR last | drop (dB) "
            "| inside range |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]  # fmt: skip
        for path in routes:
            r = json.loads(path.read_text())
            segs = r["segments"]
            first, last = segs[0]["psnr_static"], segs[-1]["psnr_static"]
            drop = (first - last) if first is not None and last is not None else None
            lines.append(
                f"| {path.parent.name} | {r.get('length_m', float('nan')):.0f} | {len(segs)} | "
                f"{_num(first)} | {_num(last)} | {_num(drop)} | {r['inside_fraction']:.2f} |"
            )
    return "\n".join(lines) + "\n" if lines else ""


def _num(value: float | None) -> str:
    return "n/c" if value is None else f"{value:.2f}"
