"""Which street-view database a city name stands for: a registry of city providers.

A city provider is a function ``provider(options, *, progress) -> Path`` that returns the city's
CityDB folder (building it first if it must). :data:`CITY_PROVIDERS` holds them:

- ``town``, the built-in procedural town, comes from the package that renders it
  (``carla_tools.town_db``, through the entry point ``[project.entry-points."cityenv.cities"]``);
  its options are a :class:`~cityenv.envs.town.TownSpec`. The library never imports that package.
- ``seoul``, ``busan``, ``annarbor`` need a database the user built: found under
  ``$CITYENV_DATA`` as ``<city>``, ``<city>/citydb`` or ``<city>.citydb`` (``options`` unused).

Another package adds a city by declaring an entry point in the ``cityenv.cities`` group, or a
script by ``CITY_PROVIDERS.register("mycity", provider)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from cityenv.errors import CityDataNotFoundError
from cityenv.registry import Registry

__all__ = ["CITIES", "CITY_PROVIDERS", "CityProvider", "resolve_city_db"]


class CityProvider(Protocol):
    """Returns a city's CityDB folder, building it first if it must."""

    def __call__(self, options: Any, *, progress: bool) -> Path:
        """The database folder (holding ``manifest.json``).

        Args:
            options: The city's typed options (a :class:`TownSpec` for ``town``; ``None`` for
                cities without options).
            progress: Show a progress bar while building.
        """
        ...


CITIES: dict[str, str] = {
    "town": "the built-in procedural town",
    "seoul": "Seoul, South Korea",
    "busan": "Busan, South Korea",
    "annarbor": "Ann Arbor, Michigan, USA",
}
"""City names of the registered environment IDs and what they are."""

CITY_PROVIDERS: Registry[CityProvider] = Registry(
    "city",
    "cityenv.cities",
    advice=(
        "Cities come from installed packages (entry-point group 'cityenv.cities'; the built-in "
        "'town' from carla_tools: pip install -e . in a checkout), or pass city_db=PATH."
    ),
)
"""City name -> provider of its CityDB folder (entry-point group ``cityenv.cities``)."""


def resolve_city_db(city: str, options: Any = None, *, progress: bool = True) -> Path:
    """The database folder of ``city`` (the town's is built on first use).

    Args:
        city: A registered city name (case and ``-``/``_``/spaces ignored).
        options: The city's typed options, handed to its provider (for ``town`` a
            :class:`~cityenv.envs.town.TownSpec`, ``None`` = its defaults; the other cities
            ignore them).
        progress: Show a progress bar while building.

    Raises:
        UnknownNameError: If no provider is registered for the name ("Did you mean ...?").
        CityDataNotFoundError: If a real city has no database under ``$CITYENV_DATA``.
    """
    key = str(city).lower().replace("-", "").replace("_", "").replace(" ", "")
    return Path(CITY_PROVIDERS.get(key)(options, progress=progress))


def _data_provider(city: str) -> CityProvider:
    """The provider of a real city: its database under ``$CITYENV_DATA``."""

    def provide(options: Any = None, *, progress: bool = True) -> Path:
        return _find_data(city)

    provide.__qualname__ = provide.__name__ = f"{city}_from_cityenv_data"
    return provide


def _find_data(city: str) -> Path:
    data = os.environ.get("CITYENV_DATA")
    tried: list[Path] = []
    if data:
        root = Path(data).expanduser()
        tried = [root / city, root / city / "citydb", root / f"{city}.citydb"]
        for path in tried:
            if (path / "manifest.json").is_file():
                return path
    where = f"looked in {', '.join(str(p) for p in tried)}" if tried else "CITYENV_DATA is not set"
    raise CityDataNotFoundError(
        f"a street-view database for {CITIES[city]} ({city!r}) is needed, got none ({where}). "
        f"Build one from your panoramas with `python -m cityenv.citydb ingest PANORAMAS.csv "
        f"$CITYENV_DATA/{city} --city {city}` (docs/citydb.md), then set CITYENV_DATA, or pass "
        f"its folder as city_db=PATH (gymnasium.make(..., city_db=PATH))."
    )


for _city in ("seoul", "busan", "annarbor"):
    CITY_PROVIDERS.register(_city, _data_provider(_city))
