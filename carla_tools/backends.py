"""The simulator backends by name: a registry of lazy factories and :func:`make_simulator`.

Apart from the interface (:mod:`carla_tools.sim`) so that the interface knows no backend. Each
factory imports its backend when called, so listing the backends needs neither moderngl nor the
``carla`` client. Built in:

- ``"town"``: the procedural town, :class:`carla_tools.town.ProceduralTown` (no server);
- ``"carla"``: a CARLA 0.9.16 server, :class:`carla_tools.carla_backend.CarlaSimulator` (needs
  ``pip install "cityenv[carla]"``).

Other packages add a backend with ``BACKENDS.register("name", factory)`` or through the
``carla_tools.simulators`` entry-point group (``name = "package.module:factory"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from carla_tools.sim import Simulator
from cityenv.registry import Registry

__all__ = ["BACKENDS", "make_simulator"]

BACKENDS: Registry[Callable[..., Simulator]] = Registry("backend", "carla_tools.simulators")
"""Backend name -> factory taking the backend's keyword options and returning an open simulator."""


@BACKENDS.register("town")
def _make_town(**options: Any) -> Simulator:
    from carla_tools.town.town import ProceduralTown

    return ProceduralTown(**options)


@BACKENDS.register("carla")
def _make_carla(**options: Any) -> Simulator:
    # imported here so that carla_tools works without the ``carla`` extra
    from carla_tools.carla_backend import CarlaSimulator

    return CarlaSimulator(**options)


def make_simulator(backend: str = "town", **options: Any) -> Simulator:
    """Open a simulator backend.

    Args:
        backend: A name in :data:`BACKENDS`: ``"town"`` (the built-in procedural town) or
            ``"carla"`` (a CARLA server, needs ``pip install "cityenv[carla]"``).
        **options: Passed to the backend's constructor (e.g. ``seed=3`` or
            ``host="localhost", port=2000``).

    Returns:
        The open simulator; close it (or use it as a context manager) when done.

    Raises:
        UnknownNameError: For an unknown backend name (the message says "Did you mean ...?").

    Example:
        >>> with make_simulator("town", seed=3) as sim:
        ...     lanes = sim.road_network().lanes
    """
    return BACKENDS.get(backend)(**options)
