"""Lazy package namespaces (PEP 562): names are imported from their modules on first use.

Used by packages whose modules pull in heavy dependencies (torch, moderngl), so that importing the
package, or one light module of it, stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_namespace(
    package: str, homes: Mapping[str, str], names: list[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: The package's dotted name (``"cityenv.geometry"``).
        homes: Public name -> the submodule that defines it (``{"Pose": "pose"}``).
        names: The package's ``__all__``.

    Returns:
        ``(__getattr__, __dir__)`` to assign at module level.
    """

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{home}"), name)

    def __dir__() -> list[str]:
        return sorted(set(names) | set(homes))

    return __getattr__, __dir__
