"""cityenv.eval: City-Bench, the evaluation of world models (an app above the library).

- :mod:`~cityenv.eval.metrics`: PSNR and SSIM per frame, whole and on static regions, and per
  window of distance travelled (drift);
- :mod:`~cityenv.eval.replay`: a held-out clip window replayed by a world model from its first
  frame along its exact trajectory, references from other traversals and capture times;
- :mod:`~cityenv.eval.perceptual`: LPIPS, FID and FVD on networks loaded from local weights
  (plain torch; reported as not computed without weights);
- :mod:`~cityenv.eval.camera`: RotErr / TransErr from camera poses estimated on the generated
  frames (two-view geometry with OpenCV, or pycolmap SfM), and on the ground truth: the
  estimator's floor;
- :mod:`~cityenv.eval.render`: ground-truth renders under named conditions through a registry
  the built-in town fills (prompt adherence, long routes);
- :mod:`~cityenv.eval.adherence`: prompt adherence: one trajectory rendered under several
  conditions, generated with each condition's prompt; how often the clip is closest to its own;
- :mod:`~cityenv.eval.longroute`: ~1 km routes rolled out and scored per 100 m segment (drift,
  colour and sharpness inside the ground truth's range);
- :mod:`~cityenv.eval.bench`: the bench as data (:class:`BenchSpec`: data, clips, window, start,
  prompt, reference exclusion, K, seed) and :data:`BENCH_PROVIDERS` (Town-Bench from
  ``carla_tools.town_bench``);
- :mod:`~cityenv.eval.rows`: the rows: warp baseline, diffusion model, its ablations;
- :mod:`~cityenv.eval.app` (``python -m cityenv.eval``): the resumable run, per-clip results;
- :mod:`~cityenv.eval.report`: ``report.md``, ``results.json``, plots, side-by-side videos.

The training run's validation pass (:mod:`cityenv.train.validate`) uses metrics and replay, so
training curves and the bench share one replay and one metric code path.
"""
