"""The package namespace re-exports every public name of its modules."""

from __future__ import annotations

import importlib

import pytest

import cityenv.geometry as geometry


@pytest.mark.parametrize("name", geometry.__all__)
def test_every_name_resolves_to_its_module_object(name: str) -> None:
    home = importlib.import_module(f"cityenv.geometry.{geometry._HOMES[name]}")
    assert getattr(geometry, name) is getattr(home, name)


def test_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Posee'"):
        _ = geometry.Posee


def test_all_lists_exactly_the_lazy_names() -> None:
    assert sorted(geometry.__all__) == sorted(geometry._HOMES)
