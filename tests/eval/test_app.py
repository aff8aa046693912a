"""``python -m cityenv.eval`` on a generated town: rows, files, report, resume, typed errors."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cityenv.errors import BenchError, ConfigError, EvaluationError
from cityenv.eval.app import EvalConfig, ModelConfig, row_specs, run
from cityenv.eval.bench import BenchSpec
from cityenv.eval.replay import ReplaySettings
from cityenv.eval.rows import AblatedModel, build_rows
from cityenv.worldmodel.base import ChunkReferences
from cityenv.worldmodel.diffusion import DiffusionWorldModel
from cityenv.worldmodel.settings import SamplingSettings

TINY = {"chunk_frames": 4, "history": 1}


def _config(data: Path, out: Path, **changes) -> EvalConfig:
    bench = BenchSpec(
        name="tiny-bench", root=str(data), window_frames=5, chunk_frames=4, max_clips=1,
        num_references=2,
    )  # fmt: skip
    model = ModelConfig(preset="tiny", sampling=dict(TINY), device="cpu")
    cfg = EvalConfig(out=str(out), bench=bench, model=model, progress=False, videos=1)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def eval_run(eval_data, tmp_path_factory):
    """One run: warp + untrained tiny + its no-sink ablation on the test clips (1 per kind)."""
    out = tmp_path_factory.mktemp("eval-run") / "out"
    result = run(_config(eval_data, out, ablations=["no_sink"]))
    return out, result


def test_a_run_writes_every_rows_clips_and_the_report(eval_run):
    out, result = eval_run
    rows = ["warp", "tiny", "tiny-no_sink"]
    clips = [w["clip_id"] for w in json.loads((out / "bench.json").read_text())["windows"]]
    assert sorted(result.replayed) == sorted((r, c) for r in rows for c in clips)
    for row in rows:
        for clip in clips:
            numbers = json.loads((out / "rows" / row / f"{clip}.json").read_text())
            frames = np.load(out / "rows" / row / f"{clip}.npz")["frames"]
            assert frames.shape == (5, 64, 64, 3) and frames.dtype == np.uint8
            assert len(numbers["per_frame"]["psnr_static"]) == 4  # the start frame is not scored
            assert numbers["seed"] == numbers["index"]
    names = ["report.md", "results.json", f"videos/{clips[0]}.mp4"]
    if importlib.util.find_spec("matplotlib") is not None:  # a dependency; absent in old venvs
        names += ["plots/psnr_static_distance.png", "plots/ssim_static_distance.png"]
    for name in names:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert result.report == out / "report.md"


def test_the_numbers_in_report_md_are_those_of_results_json(eval_run):
    out, _ = eval_run
    results = json.loads((out / "results.json").read_text())
    table = [line for line in (out / "report.md").read_text().splitlines() if line[:2] == "| "]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    body = {}
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        body[cells[0]] = dict(zip(head, cells, strict=True))
    assert set(body) == {"warp", "tiny (untrained)", "tiny-no_sink (untrained)"}
    for row in results["rows"].values():
        cells = body[row["label"]]
        assert int(cells["clips"]) == row["clips"] and int(cells["frames"]) == row["frames"] > 0
        for key, title, digits in (("psnr_static", "PSNR static", 2), ("ssim", "SSIM", 4)):
            assert cells[title] == f"{row['mean'][key]:.{digits}f}"
        assert re.fullmatch(r"n/c\[\^1\]", cells["LPIPS"])
        assert "lpips" in row["not_computed"]
    assert "[^1]: not computed: no plug-in" in (out / "report.md").read_text()
    # the means are over every scored frame of the clips' JSONs
    warp = results["rows"]["warp"]
    frames = [
        v for c in warp["per_clip"]
        for v in json.loads((out / "rows/warp" / f"{c}.json").read_text())["per_frame"]["psnr"]
    ]  # fmt: skip
    assert warp["mean"]["psnr"] == pytest.approx(np.mean(frames))
    assert results["rows"]["tiny"]["seconds_per_clip"] > 0


def test_rows_share_clips_and_seeds_and_the_warp_beats_the_untrained_model(eval_run):
    out, _ = eval_run
    results = json.loads((out / "results.json").read_text())["rows"]
    assert results["warp"]["per_clip"].keys() == results["tiny"]["per_clip"].keys()
    assert results["warp"]["mean"]["psnr_static"] > results["tiny"]["mean"]["psnr_static"]
    for clip in results["warp"]["per_clip"]:
        a = json.loads((out / "rows/tiny" / f"{clip}.json").read_text())
        b = json.loads((out / "rows/tiny-no_sink" / f"{clip}.json").read_text())
        assert a["seed"] == b["seed"] and a["references"] == b["references"]
        assert all(i["sink"] for i in a["chunk_info"]) and not any(
            i["sink"] for i in b["chunk_info"]
        )


def test_an_interrupted_run_redoes_only_the_missing_clip(eval_data, eval_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(eval_run[0], out)
    clips = [w["clip_id"] for w in json.loads((out / "bench.json").read_text())["windows"]]
    (out / "rows" / "tiny" / f"{clips[-1]}.json").unlink()  # as if killed during this clip
    kept = (out / "rows" / "warp" / f"{clips[0]}.json").stat().st_mtime_ns
    result = run(_config(eval_data, out, ablations=["no_sink"]))
    assert result.replayed == [("tiny", clips[-1])]
    assert len(result.skipped) == 3 * len(clips) - 1
    assert (out / "rows" / "warp" / f"{clips[0]}.json").stat().st_mtime_ns == kept
    # the same seed gives the same frames again
    redone = json.loads((out / "rows" / "tiny" / f"{clips[-1]}.json").read_text())
    before = json.loads((eval_run[0] / "rows" / "tiny" / f"{clips[-1]}.json").read_text())
    assert redone["per_frame"] == before["per_frame"]
    # another bench in the same folder is refused
    other = _config(eval_data, out)
    other.bench.window_frames = 9
    with pytest.raises(BenchError, match=r"holds results of another bench \(differs in \['spec', "):
        run(other)


# --- bad input ------------------------------------------------------------------------------------
def test_a_bench_naming_missing_clips_is_a_typed_error(eval_data, tmp_path):
    cfg = _config(eval_data, tmp_path / "out", model=ModelConfig())
    cfg.bench.clip_ids = ["clip-99999"]
    with pytest.raises(BenchError, match="bench.clip_ids: clip in .* got 'clip-99999'"):
        run(cfg)
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_a_frame_size_the_model_cannot_make_is_a_typed_error(eval_data, tmp_path):
    cfg = _config(eval_data, tmp_path / "out")
    cfg.bench.size = [40, 40]
    with pytest.raises(BenchError, match=r"row 'tiny' cannot make the bench's 40x40 frames in "
                       r"4-frame chunks: .*multiples of 16 pixels"):  # fmt: skip
        run(cfg)
    cfg = _config(eval_data, tmp_path / "out", warp=False)
    cfg.bench.window_frames = 7
    with pytest.raises(BenchError, match=r"use bench.window_frames=5"):
        run(cfg)


def test_a_citydb_of_another_anchor_is_a_typed_error(eval_data, tmp_path):
    clips = shutil.copytree(eval_data / "clips", tmp_path / "clips")
    marker = json.loads((clips / "store.json").read_text())
    marker["anchor"]["lat"] += 0.01
    (clips / "store.json").write_text(json.dumps(marker))
    cfg = _config(eval_data, tmp_path / "out", model=ModelConfig())
    cfg.bench.root, cfg.bench.citydb, cfg.bench.clips = None, str(eval_data / "citydb"), str(clips)
    with pytest.raises(EvaluationError, match="poses are in different ENU frames"):
        run(cfg)


def test_ablations_need_a_model_and_known_names(eval_data, tmp_path):
    with pytest.raises(ConfigError, match="are of the diffusion model, got no model"):
        row_specs(EvalConfig(ablations=["no_sink"]))
    with pytest.raises(ConfigError, match="Did you mean 'no_sink'"):
        row_specs(EvalConfig(model=ModelConfig(preset="tiny"), ablations=["no_sinks"]))
    names = [s.name for s in row_specs(_config(eval_data, tmp_path, ablations=["no_warp"]))]
    assert names == ["warp", "tiny", "tiny-no_warp"]


# --- the ablations' hooks -------------------------------------------------------------------------
def test_each_ablation_changes_what_the_model_is_given(eval_data):
    from cityenv.citydb.clips import ClipStore
    from cityenv.eval.replay import Replayer

    specs = row_specs(_config(eval_data, Path("unused"), warp=False, ablations=[
        "no_references", "no_warp", "no_sink", "first_frame_sink", "same_traversal",
    ]))  # fmt: skip
    rows = {r.spec.ablation: r for r in build_rows(specs, ReplaySettings(num_references=2))}
    assert rows["same_traversal"].replay.cross_temporal is False
    assert rows[None].replay.cross_temporal is True
    assert rows["no_sink"].model.settings.use_sink is False
    assert rows["no_warp"].model.settings.ablate == ("warp",)
    assert isinstance(rows["no_references"].model, AblatedModel)
    replayer = Replayer(eval_data / "citydb", ClipStore(eval_data / "clips", split="test"))
    window = replayer.window(replayer.store.clip_ids()[0], 0, 5)
    info = {}
    for ablation, row in rows.items():
        replay = replayer.replay(row.model, window, seed=0)
        info[ablation] = replay.chunk_info[0]
    assert info[None]["references_used"] >= 1 and info[None]["sink"]
    assert info["no_references"]["references_used"] == 0 and not info["no_references"]["sink"]
    assert not info["no_sink"]["sink"] and info["no_sink"]["references_used"] >= 1
    assert info["first_frame_sink"]["sink"]
    sink = rows["first_frame_sink"].model._sink
    np.testing.assert_array_equal(sink.image, window.rgb[0])
    np.testing.assert_array_equal(sink.pose.matrix, window.trajectory[0].matrix)


def test_sampling_settings_ablate_withholds_the_warp_in_every_branch(eval_data):
    from cityenv.citydb.clips import ClipStore
    from cityenv.eval.replay import Replayer

    assert SamplingSettings.from_mapping({"ablate": ["warp"]}).ablate == ("warp",)
    assert SamplingSettings().as_dict()["ablate"] == []
    replayer = Replayer(eval_data / "citydb", ClipStore(eval_data / "clips", split="test"))
    window = replayer.window(replayer.store.clip_ids()[0], 0, 5)
    refs, _ = replayer.references(window, window.trajectory[1:])
    assert refs.views
    seqs = {}
    for ablate in ((), ("warp",)):
        model = DiffusionWorldModel.from_preset("tiny", device="cpu", ablate=ablate, **TINY)
        model.reset(pose=window.trajectory[0], camera=window.camera,
                    references=ChunkReferences.none(1), start_image=window.rgb[0])  # fmt: skip
        seqs[ablate] = model.condition(window.trajectory[1:], refs)
    assert seqs[()].warp is not None and seqs[("warp",)].warp is None
    assert torch.equal(seqs[()].references, seqs[("warp",)].references)


def test_perceptual_metrics_from_local_weights_reach_the_report(eval_data, tmp_path):
    """LPIPS from weights on disk (random weights of the real architecture) is computed for each
    row; FID and FVD, given no weights, read n/c with the reason."""
    from safetensors.torch import save_file

    from cityenv.eval.app import MetricsConfig, perceptual_metrics
    from cityenv.eval.perceptual import LPIPS

    torch.manual_seed(0)
    state = {k: v.abs() if k.startswith("lin") else v for k, v in LPIPS().state_dict().items()}
    weights = tmp_path / "lpips"
    weights.mkdir()
    save_file(
        {k: v for k, v in state.items() if k.startswith("features.")}, weights / "vgg16.safetensors"
    )
    save_file({k: v for k, v in state.items() if k.startswith("lin")}, weights / "vgg.safetensors")
    cfg = _config(eval_data, tmp_path / "out", warp=True, model=ModelConfig())
    cfg.metrics = MetricsConfig(lpips_weights=str(weights))
    run(cfg, row_metrics=[perceptual_metrics(cfg)])
    summary = json.loads((tmp_path / "out" / "rows" / "warp" / "summary.json").read_text())
    assert summary["metrics"]["lpips"] is not None and summary["metrics"]["lpips"] > 0
    assert summary["metrics"]["fid"] is None
    assert "metrics.fid_weights=PATH" in summary["not_computed"]["fid"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "n/c" in report


def test_camera_errors_reach_the_report_with_the_ground_truths_floor(eval_data, tmp_path):
    """metrics.camera=true: the two-view estimator on each window (generated and ground truth);
    tiny 64 px windows of 5 frames may be too small for it, and then the columns must say so,
    not make numbers up."""
    cfg = _config(eval_data, tmp_path / "out", warp=True, model=ModelConfig())
    cfg.metrics.camera = True
    run(cfg)
    clip = next((tmp_path / "out" / "rows" / "warp").glob("clip-*.json"))
    camera = json.loads(clip.read_text())["camera"]
    assert set(camera) == {"generated", "ground_truth"}
    assert camera["generated"]["frames"] == 5
    assert camera["generated"]["method"] == camera["ground_truth"]["method"] == "two_view"
    summary = json.loads((tmp_path / "out" / "rows" / "warp" / "summary.json").read_text())
    for key in ("rot_err", "trans_err", "rot_err_floor", "trans_err_floor"):
        value = summary["metrics"][key]
        suffix = "_floor" if key.endswith("_floor") else ""
        if value is None:
            assert "two-view estimator followed none" in summary["not_computed"][key]
        else:
            assert value >= 0 and summary["metrics"]["camera_clips" + suffix] >= 1
    assert "RotErr (deg)" in (tmp_path / "out" / "report.md").read_text()


def test_prompt_adherence_and_a_long_route_reach_the_report(eval_data, tmp_path):
    """world.adherence / world.long_route on renders of the bench's own town (the tiny test town:
    seed 1, 1 x 1 block): the warp row ignores prompts, so it cannot beat chance."""
    from cityenv.eval.world import WorldTestsConfig

    cfg = _config(eval_data, tmp_path / "out", warp=True, model=ModelConfig())
    cfg.world = WorldTestsConfig(
        adherence=True, long_route=True, renderer="town",
        renderer_options={"seed": 1, "blocks": [1, 1]}, conditions=["sunset", "night", "fog"],
        routes=1, route_m=30.0, long_route_m=100.0, segment_m=50.0, size=[64, 48],
    )  # fmt: skip
    run(cfg)
    adherence = json.loads((tmp_path / "out/world/warp/adherence.json").read_text())
    assert adherence["conditions"] == ["sunset", "night", "fog"]
    assert adherence["accuracy_colour"] <= adherence["chance"] + 1e-9  # one output for all prompts
    route = json.loads((tmp_path / "out/world/warp/long_route.json").read_text())
    assert route["length_m"] >= 100.0 and len(route["segments"]) >= 2
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Prompt adherence" in report and "## Long route" in report
