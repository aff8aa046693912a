"""DiffusionWorldModel (tiny preset): chunks, determinism, save/load, CFG drops, keyframes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from carla_tools.town import ProceduralTown
from cityenv.errors import CheckpointError, ShapeMismatchError, UnknownNameError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.worldmodel.base import ChunkReferences
from cityenv.worldmodel.diffusion import DiffusionWorldModel, load_preset
from cityenv.worldmodel.freeze import encode_keyframes
from cityenv.worldmodel.referencing import ReferenceView
from cityenv.worldmodel.sampling import denoise, velocities, velocity

CAMERA = PinholeCamera.from_fov(64, 64, 90.0)
L = 8  # frames per chunk: 2 latents


@pytest.fixture(scope="module")
def model() -> DiffusionWorldModel:
    return DiffusionWorldModel.from_preset("tiny", device="cpu")


@pytest.fixture(scope="module")
def scene() -> tuple[Pose, list[ReferenceView]]:
    """A street pose and two rendered references of the procedural town, 10 m apart."""
    with ProceduralTown(seed=0, blocks=(1, 1), vehicle_density=0, pedestrian_density=0) as town:
        lane = next(la for la in town.road_network().lanes if la.entry >= 0 and la.exit >= 0)
        a, b = lane.waypoints[2], lane.waypoints[3]
        heading = float(np.degrees(np.arctan2(b[0] - a[0], b[1] - a[1])))
        start = Pose.from_heading(a + [0.0, 0.0, 1.6], heading)
        views = []
        for i, metres in enumerate((0.0, 10.0)):
            pose = ahead(start, metres)
            rgb, depth, _ = town.render(CAMERA, pose)
            views.append(ReferenceView(i, rgb, depth, CAMERA, pose, "t0"))
    return start, views


def ahead(pose: Pose, metres: float) -> Pose:
    return Pose.from_heading(pose.position + metres * pose.forward, pose.heading_deg)


def chunk(start: Pose, index: int, length: int = L) -> Trajectory:
    poses = [ahead(start, 0.5 * (index * length + i + 1)) for i in range(length)]
    return Trajectory.from_poses(
        poses, timestamps=0.1 * (index * length + np.arange(1, length + 1))
    )


def refs(views: list[ReferenceView], length: int = L) -> ChunkReferences:
    return ChunkReferences(views, np.zeros(length, np.int64), views[1])


def rollout(
    model: DiffusionWorldModel, scene, *, seed: int = 0, chunks: int = 2, prompt: str | None = None
) -> list[np.ndarray]:
    start, views = scene
    first = model.reset(
        pose=start,
        camera=CAMERA,
        references=refs(views, 1),
        prompt=prompt,
        generator=np.random.default_rng(seed),
    )
    return [first] + [model.generate(chunk(start, i), refs(views)).frames for i in range(chunks)]


def test_tiny_preset_is_under_a_million_parameters(model: DiffusionWorldModel) -> None:
    assert model.num_parameters < 1_000_000


def test_chunks_have_the_interface_shapes(model: DiffusionWorldModel, scene) -> None:
    start, views = scene
    first = model.reset(pose=start, camera=CAMERA, references=refs(views, 1))
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert model.reset_info["source"] == "references"  # no start image: warped references
    histories = []
    for i in range(3):
        out = model.generate(chunk(start, i), refs(views))
        assert out.frames.shape == (L, 64, 64, 3) and out.frames.dtype == np.uint8
        assert out.warps.shape == (L, 64, 64, 3) and out.masks.shape == (L, 64, 64)
        assert out.info["references_used"] == 2 and out.info["sink"]
        histories.append(out.info["history"])
    assert histories == [1, 3, 3]  # the start latent, then the last H = 3 latents
    # tokens: (H + L/4 + sink + K) latent frames x (64/8/2)^2 tokens each
    assert out.info["num_tokens"] == (3 + 2 + 1 + 2) * 16


def test_seeded_rollouts_repeat_and_seeds_differ(model: DiffusionWorldModel, scene) -> None:
    a = rollout(model, scene, seed=3)
    b = rollout(DiffusionWorldModel.from_preset("tiny", device="cpu"), scene, seed=3)
    c = rollout(model, scene, seed=4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])


def test_save_and_load_round_trip(tmp_path, model: DiffusionWorldModel, scene) -> None:
    folder = model.save_pretrained(tmp_path / "wm")
    assert (folder / "config.json").is_file()
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DiffusionWorldModel.from_pretrained(folder, device="cpu")
    assert loaded.settings == model.settings
    for x, y in zip(rollout(model, scene), rollout(loaded, scene), strict=True):
        np.testing.assert_array_equal(x, y)


def test_pickled_and_foreign_folders_are_refused(tmp_path, model: DiffusionWorldModel) -> None:
    folder = model.save_pretrained(tmp_path / "wm")
    torch.save({"w": torch.zeros(1)}, folder / "transformer" / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pickled weights \(diffusion_pytorch_model.bin\)"):
        DiffusionWorldModel.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="config.json"):
        DiffusionWorldModel.from_pretrained(tmp_path / "nothing-here")


def _sequence(model: DiffusionWorldModel, scene, references: ChunkReferences):
    start, views = scene
    model.reset(pose=start, camera=CAMERA, references=refs(views, 1), prompt="a flooded street")
    trajectory = chunk(start, 0)
    with torch.no_grad():
        return model.condition(trajectory, references)


def _targets(model: DiffusionWorldModel, seq, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return velocity(model.transformer, seq, latents, torch.tensor(600.0), model.settings)


def test_each_guidance_drop_removes_only_its_condition(model: DiffusionWorldModel, scene) -> None:
    seq = _sequence(model, scene, refs(scene[1]))
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    full = _targets(model, seq, latents)
    assert seq.text.abs().sum() > 0 and seq.warp is not None and seq.layout.references == 2

    no_text = seq.drop(["text"])
    assert torch.count_nonzero(no_text.text) == 0 and no_text.layout == seq.layout
    no_refs = seq.drop(["references"])
    assert no_refs.layout.references == 0 and not no_refs.layout.sink and no_refs.warp is not None
    no_warp = seq.drop(["warp"])
    assert no_warp.warp is None and no_warp.layout == seq.layout
    for dropped in (no_text, no_refs, no_warp):
        assert not torch.allclose(_targets(model, dropped, latents), full, atol=1e-5)
    untouched = _targets(model, seq, latents)  # dropping copies: the sequence itself is intact
    torch.testing.assert_close(untouched, full)


def test_without_references_the_model_is_trajectory_only(model: DiffusionWorldModel, scene):
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    dropped = _sequence(model, scene, refs(scene[1])).drop(["references", "warp"])
    none = _sequence(model, scene, ChunkReferences.none(L))
    assert none.warp is None and none.layout == dropped.layout
    torch.testing.assert_close(_targets(model, dropped, latents), _targets(model, none, latents))


def test_guidance_runs_the_unconditional_branch(scene) -> None:
    """Guidance adds the unconditional branch to every step: as a second batch entry of the
    same call when only text is dropped (same shapes), as a call of its own otherwise."""
    counts = []
    outputs = []
    for scale, drop in ((1.0, ("text",)), (3.0, ("text",)), (3.0, ("text", "references"))):
        wm = DiffusionWorldModel.from_preset(
            "tiny", device="cpu", guidance_scale=scale, guidance_drop=drop
        )
        calls = []
        wm.transformer.register_forward_pre_hook(
            lambda module, args, kwargs, calls=calls: calls.append(
                kwargs["hidden_states"].shape[0]
            ),
            with_kwargs=True,
        )
        outputs.append(rollout(wm, scene, chunks=1, prompt="golden sunset")[1])
        counts.append(calls)
    steps = load_preset("tiny")["sampling"]["num_inference_steps"]
    assert counts == [[1] * steps, [2] * steps, [1] * (2 * steps)]
    assert not np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[1], outputs[2])


def test_batched_guidance_branches_equal_separate_calls(model: DiffusionWorldModel, scene):
    seq = _sequence(model, scene, refs(scene[1]))
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(600.0)
    branches = (seq, seq.drop(["text"]), seq.drop(["warp"]))  # same shapes: one batch of 3
    with torch.no_grad():
        batched = velocities(model.transformer, branches, latents, t, model.settings)
        alone = [velocity(model.transformer, b, latents, t, model.settings) for b in branches]
        mixed = (seq, seq.drop(["references"]))  # fewer tokens: one call each
        mixed_out = velocities(model.transformer, mixed, latents, t, model.settings)
    assert len(batched) == 3
    for a, b in zip(batched, alone, strict=True):
        assert a.shape == b.shape == latents.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(alone[0], alone[1], atol=1e-5)
    torch.testing.assert_close(mixed_out[0], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        mixed_out[1], velocity(model.transformer, mixed[1], latents, t, model.settings)
    )


def test_prompt_changes_the_frames(model: DiffusionWorldModel, scene) -> None:
    plain = rollout(model, scene, chunks=1)[1]
    sunset = rollout(model, scene, chunks=1, prompt="golden sunset")[1]
    assert not np.array_equal(plain, sunset)


def test_freeze_frame_interpolation_keeps_keyframe_latents(model: DiffusionWorldModel, scene):
    start, views = scene
    model.reset(pose=start, camera=CAMERA, references=refs(views, 1))
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    trajectory = Trajectory.from_poses(
        [ahead(start, 0.5 * i) for i in range(10)], timestamps=0.1 * np.arange(10)
    )
    video = model.interpolate(keys, [0, 5], trajectory)
    assert video.shape == (10, 64, 64, 3) and video.dtype == np.uint8
    with pytest.raises(ShapeMismatchError, match=r"expected uint8 \(2, 64, 64, 3\)"):
        model.interpolate(keys[:, :32], [0, 5], trajectory)
    # the keyframe latents stay clean while the sampler runs around them
    with torch.no_grad():
        clean = encode_keyframes(
            model.vae, torch.from_numpy(keys).permute(3, 0, 1, 2)[None] / 127.5 - 1
        )
        seq = model.conditioner.sequence(
            camera=CAMERA,
            origin=trajectory.matrices[0],
            target_poses=np.repeat(trajectory.matrices[:1, None], 4, 1).repeat(3, 0),
            history=None,
            history_poses=np.zeros((0, 4, 4, 4)),
            warp=None,
            references=[],
            sink=None,
            prompt=None,
        )
        seq.clean_targets = torch.tensor([True, False, True])
        noise = torch.randn(1, 4, 3, 8, 8)
        noise[:, :, seq.clean_targets] = clean
        steps = []
        hook = model.transformer.register_forward_pre_hook(
            lambda module, args, kwargs: steps.append(kwargs["timestep"].clone()), with_kwargs=True
        )
        out = denoise(model.transformer, model.scheduler, seq, noise.clone(), model.settings)
        hook.remove()
    # the keyframe latents sit at t=0 in every pass, the others at the sampler's t
    assert len(steps) == model.settings.num_inference_steps
    for t in steps:
        assert t[0, 0] == 0 and t[0, 2] == 0 and t[0, 1] > 0
    torch.testing.assert_close(out[:, :, seq.clean_targets], clean)
    assert not torch.allclose(out[:, :, 1], noise[:, :, 1])


def test_bad_inputs_say_what_to_do(model: DiffusionWorldModel, scene) -> None:
    start, views = scene
    with pytest.raises(ShapeMismatchError, match="multiples of 16 pixels, got 60x60"):
        model.reset(
            pose=start, camera=PinholeCamera.from_fov(60, 60, 90.0), references=refs(views, 1)
        )
    model.reset(pose=start, camera=CAMERA, references=refs(views, 1))
    with pytest.raises(ShapeMismatchError, match="multiple of 4 frames .* got 6"):
        model.generate(chunk(start, 0, 6), refs(views, 6))
    with pytest.raises(UnknownNameError, match="Did you mean 'small'"):
        DiffusionWorldModel.from_preset("smal")


def test_from_wan_loads_a_local_diffusers_folder(tmp_path, scene, wan) -> None:
    wan.save_pretrained(tmp_path / "wan" / "transformer")
    vae_cfg = {k: v for k, v in load_preset("tiny")["vae"].items()}
    AutoencoderKLWan(**vae_cfg).save_pretrained(tmp_path / "wan" / "vae")
    wm = DiffusionWorldModel.from_wan(tmp_path / "wan", preset="swm-sf", device="cpu")
    assert wm.settings.history == 3 and wm.settings.max_references == 1
    frames = rollout(wm, scene, chunks=1)
    assert frames[1].shape == (L, 64, 64, 3)
    torch.save({}, tmp_path / "wan" / "transformer" / "old.ckpt")
    with pytest.raises(CheckpointError, match="pickled"):
        DiffusionWorldModel.from_wan(tmp_path / "wan")


def test_bfloat16_keeps_wans_fp32_modules(scene) -> None:
    wm = DiffusionWorldModel.from_preset("tiny", device="cpu", torch_dtype=torch.bfloat16)
    dit = wm.transformer
    assert dit.proj_out.weight.dtype == torch.bfloat16
    assert dit.scale_shift_table.dtype == torch.float32
    assert dit.rope.freqs_cos.dtype == torch.float32  # RoPE tables are not rounded to bf16
    frames = rollout(wm, scene, chunks=1)[1]
    assert frames.shape == (L, 64, 64, 3) and frames.dtype == np.uint8


def test_a_loaded_text_encoder_is_recorded_by_kind(tmp_path) -> None:
    from cityenv.worldmodel.text import make_text_encoder

    tiny = DiffusionWorldModel.from_preset("tiny", device="cpu")
    wm = DiffusionWorldModel(
        transformer=tiny.transformer,
        vae=tiny.vae,
        scheduler=tiny.scheduler,
        text_encoder=make_text_encoder("minilm", max_length=16),
        settings=tiny.settings,
        device="cpu",
    )
    loaded = DiffusionWorldModel.from_pretrained(wm.save_pretrained(tmp_path / "wm"))
    assert loaded.text_encoder.spec == {"kind": "minilm", "path": None, "max_length": 16}


def test_shift_and_steps_are_configurable(scene) -> None:
    low = DiffusionWorldModel.from_preset("tiny", device="cpu", shift=1.0, num_inference_steps=3)
    high = DiffusionWorldModel.from_preset("tiny", device="cpu", shift=6.0, num_inference_steps=3)
    assert low.scheduler.config.shift == 1.0 and high.scheduler.config.shift == 6.0
    for wm in (low, high):
        wm.scheduler.set_timesteps(3)
    assert len(low.scheduler.timesteps) == 3
    assert high.scheduler.timesteps[1] > low.scheduler.timesteps[1]  # more time at high noise
    assert not np.array_equal(rollout(low, scene, chunks=1)[1], rollout(high, scene, chunks=1)[1])


def test_reference_rays_use_the_references_own_camera(model: DiffusionWorldModel, scene) -> None:
    from cityenv.geometry.rays import plucker_rays

    start, views = scene
    wide = PinholeCamera.from_fov(96, 48, 120.0)  # another size and field of view than the frames
    image = np.zeros((48, 96, 3), np.uint8)
    other = ReferenceView(7, image, np.full((48, 96), 5.0, np.float32), wide, views[1].pose, "t1")
    seq = _sequence(model, scene, ChunkReferences([other], np.zeros(L, np.int64), None))
    trajectory = chunk(start, 0)
    expected = plucker_rays(wide.rescaled(8, 8), other.pose, trajectory.matrices[0])
    torch.testing.assert_close(seq.reference_rays[0, :6, 0], expected)
    as_target = plucker_rays(CAMERA.rescaled(8, 8), other.pose, trajectory.matrices[0])
    assert not torch.allclose(seq.reference_rays[0, :6, 0], as_target)


def test_history_zero_uses_no_history(scene) -> None:
    wm = DiffusionWorldModel.from_preset("tiny", device="cpu", history=0)
    start, views = scene
    wm.reset(pose=start, camera=CAMERA, references=refs(views, 1))
    assert [wm.generate(chunk(start, i), refs(views)).info["history"] for i in range(2)] == [0, 0]


def test_dtype_names_from_configs_work() -> None:
    wm = DiffusionWorldModel.from_preset("tiny", device="cpu", torch_dtype="bfloat16")
    assert wm.transformer.proj_out.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="torch_dtype must be a torch.dtype or its name"):
        DiffusionWorldModel.from_preset("tiny", torch_dtype="bfloat17")


def test_a_loaded_model_without_a_record_warns_at_another_chunk_length(
    tmp_path, model: DiffusionWorldModel
):
    """A folder that does not record its training (older saves) keeps the old warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.check_settings(CAMERA, 8)  # random weights: any multiple of 4 is as good
    loaded = DiffusionWorldModel.from_pretrained(model.save_pretrained(tmp_path / "wm"))
    assert loaded.checkpoint == tmp_path / "wm" and loaded.trained is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.check_settings(CAMERA, 12)  # the length it was set up for
    with pytest.warns(UserWarning, match="chunk_length=8 differs from the 12-frame chunks"):
        loaded.check_settings(CAMERA, 8)


def test_a_trained_model_refuses_another_chunk_length(tmp_path, model: DiffusionWorldModel):
    """A folder that records its 12-frame training chunks refuses 8, no longer warns."""
    import warnings

    from cityenv.worldmodel.checkpoint import TrainedOn

    model.trained = TrainedOn(chunk_frames=12, stage="transformer", steps=3)
    try:
        loaded = DiffusionWorldModel.from_pretrained(model.save_pretrained(tmp_path / "wm"))
    finally:
        model.trained = None  # the module's fixture stays a random preset
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.check_settings(CAMERA, 12)
        with pytest.raises(
            ShapeMismatchError,
            match=r"was trained on 12-frame chunks; got 8-frame chunks: make the env with "
            r"chunk_length=12\.$",
        ):
            loaded.check_settings(CAMERA, 8)


def test_each_model_owns_its_text_encoder(scene) -> None:
    a = DiffusionWorldModel.from_preset("tiny", device="cpu")
    b = DiffusionWorldModel.from_preset("tiny", device="cpu")
    rollout(a, scene, chunks=1, prompt="golden sunset")  # loads a's encoder
    before = rollout(b, scene, chunks=1, prompt="golden sunset")
    assert a.text_encoder is not b.text_encoder
    a.to(dtype=torch.float64)  # converting one model ...
    a.text_encoder.to("meta")  # ... or moving its encoder to a device b is not on
    assert a.transformer.proj_out.weight.dtype == torch.float64
    assert b.text_encoder.device == torch.device("cpu")
    assert {p.dtype for p in b.text_encoder.loaded.model.parameters()} == {torch.float32}
    after = rollout(b, scene, chunks=1, prompt="golden sunset")  # ... leaves b as it was
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_folder_saved_before_the_rename_still_loads(tmp_path, model) -> None:
    import json

    folder = model.save_pretrained(tmp_path / "wm")
    meta = json.loads((folder / "config.json").read_text())
    assert set(meta) == {"_class_name", "sampling", "text_encoder"}
    meta["rollout"] = meta.pop("sampling")  # the format written by earlier versions
    (folder / "config.json").write_text(json.dumps(meta))
    assert DiffusionWorldModel.from_pretrained(folder, device="cpu").settings == model.settings
    del meta["rollout"]
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"lacks \['sampling'\]"):
        DiffusionWorldModel.from_pretrained(folder)


def test_parts_must_fit_together(model) -> None:
    from cityenv.errors import InvalidOptionError
    from cityenv.worldmodel.settings import SamplingSettings

    small = DiffusionWorldModel.from_preset("small", device="cpu")
    with pytest.raises(ShapeMismatchError, match="latent_channels is 16, expected 4"):
        DiffusionWorldModel(
            transformer=small.transformer,
            vae=model.vae,
            scheduler=model.scheduler,
            text_encoder=model.text_encoder,
            device="cpu",
        )
    with pytest.raises(InvalidOptionError, match="multiple of the VAE's temporal ratio 4, got 6"):
        DiffusionWorldModel.from_preset("tiny", device="cpu", chunk_frames=6)
    assert isinstance(model.settings, SamplingSettings)


def test_warping_and_encoding_share_one_prepared_reference_cache(scene) -> None:
    wm = DiffusionWorldModel.from_preset("tiny", device="cpu")
    start, views = scene
    wm.reset(pose=start, camera=CAMERA, references=refs(views, 1))
    wm.generate(chunk(start, 0), refs(views))
    assert len(wm.referencer.cache) == 2  # both views, prepared once at 64x64
    assert len(wm.conditioner.latents) == 2  # and encoded once
    hits = wm.referencer.cache.hits
    wm.generate(chunk(start, 1), refs(views))
    assert wm.referencer.cache.hits > hits and len(wm.referencer.cache) == 2


def test_create_takes_typed_options(tmp_path, model) -> None:
    from cityenv.errors import UnknownOptionError
    from cityenv.worldmodel.options import DiffusionOptions

    folder = model.save_pretrained(tmp_path / "wm")
    wm = DiffusionWorldModel.create(DiffusionOptions(path=folder, device="cpu"))
    assert wm.checkpoint == folder
    loaded = DiffusionWorldModel.create(path=str(folder), device="cpu", num_inference_steps=1)
    assert loaded.settings.num_inference_steps == 1
    with pytest.raises(UnknownOptionError, match=r"Did you mean 'num_inference_steps'\?"):
        DiffusionWorldModel.create(path=folder, num_inference_step=1)
