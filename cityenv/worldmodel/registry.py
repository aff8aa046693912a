"""World models by name: :data:`WORLD_MODELS` and :func:`make_world_model`.

The environment's ``world_model=`` takes a registered name, a :class:`WorldModel`, or a
callable that builds one. The names:

- ``warp`` (:meth:`WarpWorldModel.create <cityenv.worldmodel.warp.WarpWorldModel.create>`),
  ``diffusion`` (:meth:`DiffusionWorldModel.create
  <cityenv.worldmodel.diffusion.DiffusionWorldModel.create>`) and ``truth``
  (:meth:`TrueRenderWorldModel.create <cityenv.worldmodel.truth.TrueRenderWorldModel.create>`),
  built in;
- any entry point of the group ``cityenv.world_models`` of an installed package
  (``[project.entry-points."cityenv.world_models"] mymodel = "mypkg.models:MyModel.create"``);
- any name a script registers: ``WORLD_MODELS.register("mymodel", MyModel)``.

The trust boundary: a world model's name often comes from a config file, a command line
(``python -m cityenv.rollout world_model=...``) or a scenario, and importing a module runs its
code. So a name is looked up, never imported: only code the user installed (entry points) or
registered runs. ``"package.module:attr"`` is taken only with the explicit prefix ``import:``
(``world_model="import:mypkg.models:MyModel"``): whoever writes that string asks for that
module to be imported, as ``_target_`` does in a Hydra config; never put it in a config that
comes from someone you do not trust. A plain ``"package.module:attr"`` is refused with an
:class:`~cityenv.errors.UnsafeImportError` that says all this.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from cityenv.errors import ConfigError, UnsafeImportError
from cityenv.registry import Registry
from cityenv.worldmodel.base import WorldModel

__all__ = ["IMPORT_PREFIX", "WORLD_MODELS", "WorldModelFactory", "make_world_model"]

WorldModelFactory = Callable[..., WorldModel]
"""``factory(**world_model_options) -> WorldModel``."""

IMPORT_PREFIX = "import:"
"""The opt-in prefix of a world model given as an import path (``import:pkg.module:attr``)."""

ENTRY_POINT_GROUP = "cityenv.world_models"

WORLD_MODELS: Registry[WorldModelFactory] = Registry(
    "world_model",
    ENTRY_POINT_GROUP,
    advice=(
        f"Other world models come from installed packages (entry-point group "
        f"{ENTRY_POINT_GROUP!r}), from WORLD_MODELS.register(name, factory), or as the class "
        "or a factory itself (world_model=MyModel)."
    ),
)
"""World-model name -> factory called with the env's ``world_model_options``."""


def _warp(**options: Any) -> WorldModel:
    from cityenv.worldmodel.warp import WarpWorldModel  # imported on use: keeps names cheap

    return WarpWorldModel.create(**options)


def _diffusion(**options: Any) -> WorldModel:
    from cityenv.worldmodel.diffusion import DiffusionWorldModel  # pulls in diffusers

    return DiffusionWorldModel.create(**options)


def _truth(**options: Any) -> WorldModel:
    from cityenv.worldmodel.truth import TrueRenderWorldModel  # the simulator's true renders

    return TrueRenderWorldModel.create(**options)


WORLD_MODELS.register("warp", _warp)
WORLD_MODELS.register("diffusion", _diffusion)
WORLD_MODELS.register("truth", _truth)


def make_world_model(
    spec: str | WorldModel | WorldModelFactory, options: Mapping[str, Any] | None = None
) -> WorldModel:
    """The world model that ``spec`` names or builds, given ``options``.

    Args:
        spec: A name of :data:`WORLD_MODELS`, ``"import:package.module:attr"`` (see the module
            docstring), a built :class:`WorldModel` (then ``options`` must be empty) or a
            callable ``factory(**options) -> WorldModel`` (a class, a ``create`` method).
        options: Keyword arguments of the factory (the env's ``world_model_options``).

    Returns:
        The world model.

    Raises:
        UnknownNameError: If the name is not registered ("Did you mean ...?").
        UnsafeImportError: If the name is an import path without the ``import:`` prefix.
        ConfigError: If ``options`` is not a mapping or comes with a built model, if the
            import path cannot be imported, or if the factory builds something else.
    """
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(
            f"world_model_options must be a mapping of keyword arguments, got "
            f"{type(options).__name__} {options!r}; pass a dict such as {{'preset': 'tiny'}}."
        )
    if isinstance(spec, WorldModel):
        if options:
            raise ConfigError(
                "world_model_options are passed to the world model's factory, but world_model "
                f"is an already built {type(spec).__name__}; give a name or a factory instead, "
                "or drop the options."
            )
        return spec
    factory = _factory(spec) if isinstance(spec, str) else spec
    if not callable(factory):
        raise ConfigError(
            "world_model must be a registered name, a WorldModel or a callable that builds "
            f"one, got {type(spec).__name__} {spec!r}; give e.g. 'warp' or 'diffusion'."
        )
    model = factory(**dict(options or {}))
    if not isinstance(model, WorldModel):
        raise ConfigError(
            f"world_model {spec!r} must build a cityenv WorldModel, got a "
            f"{type(model).__name__}; subclass cityenv.worldmodel.WorldModel."
        )
    return model


def _factory(name: str) -> WorldModelFactory:
    """The factory of a registered name or of an ``import:`` path."""
    if name.startswith(IMPORT_PREFIX):
        return _imported(name.removeprefix(IMPORT_PREFIX))
    if name not in WORLD_MODELS and ":" in name:
        raise UnsafeImportError(
            f"world_model {name!r} looks like an import path; a world model's name is looked "
            f"up in the registry ({', '.join(WORLD_MODELS.names())}), never imported, because "
            "importing a module runs its code and names often come from config files. Register "
            f"it (WORLD_MODELS.register, or an entry point in group {ENTRY_POINT_GROUP!r}), pass "
            f"the class itself, or, if you trust where this string comes from, write "
            f"'{IMPORT_PREFIX}{name}'."
        )
    return WORLD_MODELS.get(name)


def _imported(path: str) -> WorldModelFactory:
    """``package.module:attr.attr`` imported (the caller opted in with ``import:``)."""
    module_name, _, attrs = path.partition(":")
    if not module_name or not attrs:
        raise ConfigError(
            f"world_model '{IMPORT_PREFIX}{path}' must be '{IMPORT_PREFIX}package.module:attr', "
            "got no ':attr' part; name the factory after the colon."
        )
    try:
        target: Any = importlib.import_module(module_name)
        for part in attrs.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"world_model '{IMPORT_PREFIX}{path}' must name an importable module and attribute, "
            f"got an import that fails ({type(exc).__name__}: {exc}); check the module and "
            "attribute names and that the package is installed."
        ) from exc
    return target
