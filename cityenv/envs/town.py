"""The built-in town's options (:class:`TownSpec`) and where its database is cached.

``CityWorld-Town-v0`` needs no data from the user: its street-view database is built on first use
by the city provider registered as ``"town"`` (:data:`cityenv.envs.cities.CITY_PROVIDERS`; the
package ``carla_tools`` provides it through the ``cityenv.cities`` entry point, capturing its
procedural town with the data generator) into ``$CITYENV_CACHE/<TownSpec.folder_name>/citydb``.
The library only knows the options and the cache path; it never imports ``carla_tools``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cityenv.citydb.format import FORMAT_VERSION
from cityenv.errors import ConfigError, unknown_name
from cityenv.paths import cache_dir

__all__ = ["BUILD_OPTIONS", "TownSpec", "build_town_db", "town_db_path"]

BUILD_OPTIONS = ("progress",)
"""Keys of the env's ``town=`` mapping that say how to build, not what (not in the folder name)."""


@dataclass
class TownSpec:
    """What the built-in town's database holds: the one source of these defaults.

    The env's ``town={...}`` options are checked against it (:meth:`from_options`) and the
    rollout's config holds it (``town.blocks=[1,1]``). A plain (not frozen) dataclass with a list
    so that Hydra can override its fields.

    Attributes:
        seed: Seed of the procedural town (layout, buildings, traffic).
        blocks: City blocks ``[east, north]``; ``[2, 2]`` is about 1 km of road.
        size: Width and height of each reference view, pixels.
        spacing_m: Distance between reference captures along a lane, metres.
    """

    seed: int = 0
    blocks: list[int] = field(default_factory=lambda: [2, 2])
    size: int = 256
    spacing_m: float = 10.0

    def __post_init__(self) -> None:
        self.seed = _integer("seed", self.seed, minimum=0)
        blocks = self.blocks
        if isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__len__") or len(blocks) != 2:
            raise ConfigError(
                f"town option blocks must be a pair [east, north] of block counts, got {blocks!r}."
            )
        self.blocks = [_integer("blocks", b, minimum=1) for b in blocks]
        self.size = _integer("size", self.size, minimum=1)
        spacing = self.spacing_m
        if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or spacing <= 0:
            raise ConfigError(f"town option spacing_m must be metres > 0, got {spacing!r}.")
        self.spacing_m = float(spacing)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | TownSpec | None) -> TownSpec:
        """The spec of an env's ``town=`` mapping (build options such as ``progress`` dropped).

        Raises:
            ConfigError: If a key is not a field of :class:`TownSpec` (nor a build option;
                "Did you mean ...?") or a value has the wrong type or range.
        """
        if isinstance(options, TownSpec):
            return options
        if options is not None and not isinstance(options, Mapping):
            raise ConfigError(
                f"town must be a mapping of TownSpec options, got {type(options).__name__}."
            )
        names = [f.name for f in dataclasses.fields(cls)]
        given = dict(options or {})
        for key in given:
            if key not in names and key not in BUILD_OPTIONS:
                raise unknown_name("town option", key, [*names, *BUILD_OPTIONS], error=ConfigError)
        return cls(**{k: v for k, v in given.items() if k in names})

    @property
    def folder_name(self) -> str:
        """``town-seed<seed>-v<format>``, plus the sizes when they are not the defaults."""
        name = f"town-seed{self.seed}-v{FORMAT_VERSION}"
        default = TownSpec()
        if (self.blocks, self.size, self.spacing_m) != (
            default.blocks,
            default.size,
            default.spacing_m,
        ):
            name += f"-{self.blocks[0]}x{self.blocks[1]}-{self.size}px-{self.spacing_m:g}m"
        return name


def _integer(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"town option {name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def town_db_path(spec: TownSpec | None = None) -> Path:
    """Where the town database of ``spec`` is cached (``<cache>/<folder_name>/citydb``)."""
    return cache_dir() / (spec or TownSpec()).folder_name / "citydb"


def build_town_db(**options: Any) -> Path:
    """The built-in town's database folder, built by its provider on first use.

    A shortcut for ``resolve_city_db("town", TownSpec.from_options(options))``: the ``"town"``
    provider of :data:`~cityenv.envs.cities.CITY_PROVIDERS` (``carla_tools.town_db``) does the
    building.

    Args:
        **options: :class:`TownSpec` fields (``seed``, ``blocks``, ``size``, ``spacing_m``) and
            ``progress`` (show a progress bar while building; default True).

    Returns:
        The database folder (holding ``manifest.json``).

    Raises:
        ConfigError: If an option is unknown ("Did you mean ...?") or has a wrong value.
    """
    from cityenv.envs.cities import resolve_city_db

    spec = TownSpec.from_options(options)
    return resolve_city_db("town", spec, progress=bool(options.get("progress", True)))
