"""Which street-view database a city name stands for.

``town`` is the built-in procedural town (:mod:`cityenv.envs.town`, generated on first use).
Real cities (``seoul``, ``busan``, ``annarbor``) need a database the user built: given as
``city_db=`` or found under ``$CITYENV_DATA`` as ``<city>``, ``<city>/citydb`` or
``<city>.citydb``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from cityenv.errors import CityDataNotFoundError, UnknownNameError

__all__ = ["CITIES", "resolve_city_db"]

CITIES: dict[str, str] = {
    "town": "the built-in procedural town",
    "seoul": "Seoul, South Korea",
    "busan": "Busan, South Korea",
    "annarbor": "Ann Arbor, Michigan, USA",
}
"""Known city names and what they are."""


def resolve_city_db(city: str, town: dict[str, Any] | None = None) -> Path:
    """The database folder of ``city`` (building the town's on first use).

    Args:
        city: A name of :data:`CITIES` (case and ``-``/``_`` ignored).
        town: Keyword arguments of :func:`cityenv.envs.town.build_town_db` (``seed``, ``blocks``,
            ``size``, ``spacing_m``, ``progress``).

    Raises:
        UnknownNameError: If the name is not a known city.
        CityDataNotFoundError: If a real city has no database under ``$CITYENV_DATA``.
    """
    key = str(city).lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in CITIES:
        close = difflib.get_close_matches(key, CITIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"city must be one of {sorted(CITIES)}, got {city!r}{hint}")
    if key == "town":
        from cityenv.envs.town import build_town_db

        return build_town_db(**(town or {}))
    return _find_data(key)


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
