"""The world models shipped inside the package (``cityenv/weights/<name>/``), loaded offline.

``world_model="diffusion"`` with no ``path`` and no ``preset`` loads :data:`DEFAULT_SHIPPED`,
the built-in town's trained model (``docs/model-card.md``): a world-model folder in the format
of :meth:`~cityenv.worldmodel.diffusion.DiffusionWorldModel.save_pretrained`, installed as
package data, so nothing is downloaded. Its ``config.json`` records what it was trained on
(``"trained"``: 128 x 128 frames in 12-frame chunks,
:class:`~cityenv.worldmodel.checkpoint.TrainedOn`), so the environment makes frames of that size
when ``width`` / ``height`` are left unset and refuses other sizes and chunk lengths.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from cityenv.errors import CheckpointError, unknown_name

__all__ = ["DEFAULT_SHIPPED", "SHIPPED", "shipped_model_path"]

SHIPPED = ("town",)
"""Names of the shipped models (folders of ``cityenv/weights/``)."""

DEFAULT_SHIPPED = "town"
"""The model ``world_model="diffusion"`` loads when given neither a path nor a preset."""


def shipped_model_path(name: str = DEFAULT_SHIPPED) -> Path:
    """The folder of the shipped model ``name``.

    Raises:
        UnknownNameError: If ``name`` is not in :data:`SHIPPED` (with "Did you mean").
        CheckpointError: If its files are missing from this installation.
    """
    if name not in SHIPPED:
        raise unknown_name("shipped world model", name, SHIPPED)
    folder = Path(str(resources.files("cityenv") / "weights" / name))
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"the shipped world model {name!r} is missing from this installation (expected "
            f"{folder}/config.json); reinstall cityenv (pip install --force-reinstall cityenv) "
            "or pass world_model_options={'path': <a saved model folder>}"
        )
    return folder
