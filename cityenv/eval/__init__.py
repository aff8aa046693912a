"""cityenv.eval: City-Bench, the evaluation of world models (an app above the library).

- :mod:`~cityenv.eval.metrics`: PSNR and SSIM per frame, whole and on static regions, and per
  window of distance travelled (drift);
- :mod:`~cityenv.eval.replay`: a held-out clip window replayed by a world model from its first
  frame along its exact trajectory, references from other traversals and capture times;
- :mod:`~cityenv.eval.perceptual`: LPIPS, FID and FVD on networks loaded from local weights
  (plain torch; reported as not computed without weights);
- :mod:`~cityenv.eval.camera`: RotErr / TransErr from camera poses that pycolmap estimates on the
  generated frames (and on the ground truth: the estimator's floor);
- :mod:`~cityenv.eval.render`: ground-truth renders under named conditions through a registry
  the built-in town fills (prompt adherence, long routes).

The training run's validation pass (:mod:`cityenv.train.validate`) uses both, so training curves
and the bench share one replay and one metric code path.
"""
