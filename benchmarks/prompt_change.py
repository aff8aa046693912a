"""The README's prompt change: the main job's scenario under the warp and under the shipped model.

Plays ``configs/scenarios/town_route.yaml`` (the main job of ``python -m cityenv.rollout``: the
route follower, its prompt schedule) twice with the same seed: once with the warp world model
(which ignores prompts) and once with a trained diffusion model (the shipped ``town`` model by
default). It keeps the last frame before each prompt change and the frames a few steps after,
writes a picture (rows: world models; columns: the frames around each change, titled with the
prompt in force) and prints measured colour statistics of the frames under each prompt (mean
CIE Lab L* = lightness, a*, b* = blue-yellow) so the change is a number as well as a picture::

    python benchmarks/prompt_change.py                      # -> docs/prompt-change.png
    python benchmarks/prompt_change.py --model-path runs/x/checkpoints/step-00006000/world_model \\
        --steps 40 --out /tmp/prompt.png

The scenario's frames are 128 x 128 (the shipped model's size); ``--steps`` shortens the
drive (the scenario's own length is 90 steps; the second prompt starts at its step 25).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cityenv.eval.longroute import frame_statistics
from cityenv.rollout import RolloutConfig, _resolved, make_env, scenario_path
from cityenv.scenario import load_scenario, run_scenario

AFTER = (2, 6, 12)
"""Steps after a prompt change whose last frames are shown."""


def play(world_model: str, options: dict, args: argparse.Namespace) -> tuple[list, list]:
    """Frames per step (``steps[i]`` = the frames of env step ``i``, 0 = reset) and prompts."""
    config = RolloutConfig(
        scenario=args.scenario,
        world_model=world_model,
        world_model_options=options,
        width=args.size,
        height=args.size,
        max_steps=args.steps,
        rrd=False,
        video=False,
        progress=True,
        out=Path("/tmp/prompt-change-unused"),
    )
    scenario = _resolved(config, load_scenario(scenario_path(config.scenario)))
    env = make_env(config, scenario)
    steps: list[np.ndarray] = []
    try:
        result = run_scenario(env, scenario, seed=args.seed, on_frames=steps.append)
    finally:
        env.close()
    return steps, result.prompts


def lab_stats(frames: np.ndarray) -> tuple[float, float, float]:
    """Mean L*, a*, b* of uint8 ``(T, H, W, 3)`` frames (the eval's :func:`frame_statistics`)."""
    stats = frame_statistics(frames)
    return tuple(float(stats[f"{c}_mean"].mean()) for c in "Lab")  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="town_route")
    parser.add_argument("--model-path", default=None, help="model folder (default: shipped)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/prompt-change.png")
    args = parser.parse_args()

    options = {"path": args.model_path} if args.model_path else {}
    runs = {}
    for name, wm, opts in (("warp", "warp", {}), ("diffusion", "diffusion", options)):
        t = time.perf_counter()
        steps, prompts = play(wm, opts, args)
        runs[name] = (steps, prompts, time.perf_counter() - t)
    prompts = runs["diffusion"][1]
    changes = [s for s, _ in prompts]  # step at which each prompt starts (0 = reset)
    report: dict = {"prompts": prompts, "rows": {}}
    for name, (steps, _, seconds) in runs.items():
        per_prompt = []
        for i, start in enumerate(changes):
            end = changes[i + 1] if i + 1 < len(changes) else len(steps)
            # the model sees a prompt from the step after it is set: skip 2 steps of transition
            chunk = np.concatenate(steps[start + 2 : end + 1] if start else steps[1 : end + 1])
            per_prompt.append(dict(zip(("L", "a", "b"), lab_stats(chunk), strict=True)))
        report["rows"][name] = {"seconds": round(seconds, 1), "lab_per_prompt": per_prompt}
        print(
            f"{name:10s} "
            + "  ".join(
                f"prompt {i}: L {p['L']:5.1f} a {p['a']:5.1f} b {p['b']:5.1f}"
                for i, p in enumerate(per_prompt)
            )
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    change = changes[1] if len(changes) > 1 else len(runs["warp"][0]) // 2
    cols = [change] + [change + a for a in AFTER if change + a < len(runs["warp"][0])]
    fig, axes = plt.subplots(2, len(cols), figsize=(2.4 * len(cols), 5.2), squeeze=False)
    for r, (name, (steps, _, _)) in enumerate(runs.items()):
        for c, step in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(steps[step][-1])
            ax.set_xticks([]), ax.set_yticks([])
            when = "before" if step == change else f"+{step - change} steps"
            if r == 0:
                ax.set_title(f"step {step} ({when})", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    before, after = prompts[0][1], prompts[1][1] if len(prompts) > 1 else prompts[0][1]
    fig.suptitle(f'prompt "{before}"\n-> at step {change}: "{after}"', fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
