"""Named registries that packages above the library fill (plugins through entry points).

The library never imports its users (``carla_tools``, ``policies``); they reach it by filling a
registry. A registry knows an entry-point group: on the first lookup of a name it does not hold,
it loads the group's entry points (``[project.entry-points."cityenv.cities"]`` in a package's
``pyproject.toml``) and registers them, so an installed package is found without an import from
the library. Code may also call :meth:`Registry.register` directly (tests, notebooks).

Registries of cityenv:

- ``cityenv.cities`` (:data:`cityenv.envs.cities.CITY_PROVIDERS`): city name -> a function that
  returns the city's CityDB folder (the built-in town's comes from ``carla_tools``).
- ``cityenv.agents`` (:data:`cityenv.agents.AGENTS`): agent name -> a factory of the agents that
  drive the main job (the scenario driver comes from ``policies``).

Entry points are code the user installed: a registry loads only the packages of its own group,
never a module path given as a string at run time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from cityenv.errors import CityEnvError, UnknownNameError, unknown_name

__all__ = ["Registry"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects, filled by :meth:`register` and by entry points.

    Args:
        kind: What the names name, for messages (``"city"``, ``"agent"``).
        group: Entry-point group loaded on the first miss, or ``None`` for none.
        error: Exception class raised for an unknown name.
        advice: A sentence appended to the unknown-name message (what to do).
    """

    def __init__(
        self,
        kind: str,
        group: str | None = None,
        *,
        error: type[CityEnvError] = UnknownNameError,
        advice: str = "",
    ) -> None:
        self.kind = kind
        self.group = group
        self.error = error
        self.advice = advice
        self._items: dict[str, T] = {}
        self._loaded = group is None

    def register(self, name: str, obj: T | None = None, *, replace: bool = False):
        """Register ``obj`` under ``name``; without ``obj``, a decorator that registers its target.

        Raises:
            ValueError: If ``name`` is taken and ``replace`` is false.
        """
        if obj is None:

            def decorator(target: T) -> T:
                self.register(name, target, replace=replace)
                return target

            return decorator
        if not replace and name in self._items and self._items[name] is not obj:
            raise ValueError(
                f"{self.kind} {name!r} is registered already ({self._items[name]!r}); "
                "pass replace=True to replace it"
            )
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Forget ``name`` (no error when absent)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        """The object registered as ``name``, loading the entry-point group on a miss.

        Raises:
            UnknownNameError: (or the registry's ``error``) If nothing is registered as
                ``name``; the message lists the known names and says "Did you mean ...?".
        """
        if name not in self._items:
            self.load_entry_points()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise unknown_name(
                self.kind, name, self.names(), error=self.error, advice=self.advice
            ) from None

    def names(self) -> list[str]:
        """Every registered name (entry points included), sorted."""
        self.load_entry_points()
        return sorted(self._items)

    def load_entry_points(self) -> None:
        """Register the group's entry points once (names already registered are kept)."""
        if self._loaded:
            return
        self._loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                self._items[ep.name] = ep.load()
            except ImportError as exc:  # an extra that is not installed
                log.debug("entry point %s of %s not loaded: %s", ep.name, self.group, exc)
                self._items[ep.name] = _missing(ep.name, ep.value, exc, self.error)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, names={sorted(self._items)})"


def _missing(
    name: str, target: str, exc: ImportError, error: type[CityEnvError]
) -> Callable[..., object]:
    """A stand-in for an entry point whose module could not be imported: raises when used."""

    def unavailable(*args: object, **kwargs: object) -> object:
        raise error(
            f"{name!r} is provided by {target} but importing it failed: {exc}. Install what "
            "it needs and retry (cityenv's extras: pip install 'cityenv[town]' for the built-in "
            "town, 'cityenv[rl]' for PPO, 'cityenv[carla]' for a CARLA server)."
        )

    return unavailable
