"""cityenv.train: ``python -m cityenv.train``, training the world model (an app above the library).

- :mod:`~cityenv.train.data`: training pairs from a CityDB + clip store (cross-temporal);
- :mod:`~cityenv.train.tasks`: the ``transformer`` and ``vae`` stages;
- :mod:`~cityenv.train.loop`: the loop (grad accumulation, EMA, checkpoints, TensorBoard);
- :mod:`~cityenv.train.parallel`: one process or many under torchrun (DDP, FSDP2);
- :mod:`~cityenv.train.checkpoint`: crash-safe checkpoints with exact resume;
- :mod:`~cityenv.train.config` / :mod:`~cityenv.train.app`: the typed config and the run.

See ``docs/train.md``.
"""
