"""The project's small shared infrastructure: LRUCache, unknown-name errors, registries."""

from __future__ import annotations

import pytest

from cityenv.cache import LRUCache
from cityenv.errors import CheckpointError, UnknownNameError, check_name, unknown_name
from cityenv.registry import Registry


def test_lru_evicts_least_recently_used_and_counts_hits():
    cache = LRUCache[str, int](2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)  # evicts "b"
    assert "b" not in cache and list(cache) == ["a", "c"]
    assert cache.get("b") is None
    assert (cache.hits, cache.misses) == (1, 1)
    cache.clear()
    assert len(cache) == 0 and (cache.hits, cache.misses) == (0, 0)


def test_lru_valid_check_makes_a_stale_value_a_miss():
    cache = LRUCache[int, tuple[object, str]](4)
    owner, other = object(), object()
    cache.put(7, (owner, "prepared"))
    assert cache.get(7, valid=lambda v: v[0] is owner) == (owner, "prepared")
    assert cache.get(7, valid=lambda v: v[0] is other) is None
    made = cache.get_or_create(7, lambda: (other, "again"), valid=lambda v: v[0] is other)
    assert made == (other, "again") and cache.get(7) == (other, "again")


def test_lru_capacity_zero_keeps_nothing_and_negative_is_refused():
    cache = LRUCache[int, int](0)
    assert cache.get_or_create(1, lambda: 5) == 5 and len(cache) == 0
    with pytest.raises(ValueError, match="capacity must be >= 0, got -1"):
        LRUCache(-1)


def test_unknown_name_message_and_class():
    err = unknown_name("weather", "fgo", ["clear", "fog"])
    assert isinstance(err, UnknownNameError)
    assert str(err) == "weather must be one of ['clear', 'fog'], got 'fgo'. Did you mean 'fog'?"
    err = unknown_name("kind", "zzz", ["a"], error=CheckpointError, advice="Pick one.")
    assert isinstance(err, CheckpointError) and str(err).endswith("got 'zzz'. Pick one.")
    assert check_name("weather", "fog", ("clear", "fog")) == "fog"
    with pytest.raises(UnknownNameError, match=r"got 3\."):
        check_name("weather", 3, ("clear", "fog"))


def test_registry_register_get_and_unknown():
    reg: Registry[int] = Registry("colour", advice="Register it first.")
    reg.register("red", 1)

    @reg.register("green")
    def green() -> int:
        return 2

    assert reg.get("red") == 1 and reg.get("green") is green
    assert reg.names() == ["green", "red"] and "red" in reg
    with pytest.raises(UnknownNameError, match=r"got 'rde'\. Did you mean 'red'\? Register"):
        reg.get("rde")
    with pytest.raises(ValueError, match="registered already"):
        reg.register("red", 3)
    reg.register("red", 3, replace=True)
    assert reg.get("red") == 3


def test_registry_finds_the_town_through_its_entry_point():
    """The built-in town's provider is declared in pyproject (entry-point group cityenv.cities)
    and found without the library importing carla_tools."""
    cities: Registry = Registry("city", "cityenv.cities")
    assert "town" in cities
    provider = cities.get("town")
    assert provider.__module__ == "carla_tools.town_db" and provider.__name__ == "town_provider"
    agents: Registry = Registry("agent", "cityenv.agents")
    assert agents.get("route_follower").__module__ == "policies.scenario"


def test_an_entry_point_that_fails_to_import_names_the_extra(tmp_path, monkeypatch):
    """A missing extra: the registry keeps a stand-in that says what to install when used."""
    dist = tmp_path / "missing_extra_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: missing-extra-demo\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "[cityenv.test_missing]\nghost = no_such_module_for_cityenv_tests:provide\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("city", "cityenv.test_missing")
    stand_in = reg.get("ghost")
    with pytest.raises(UnknownNameError, match=r"'ghost' is provided by no_such_module_for_cityenv"
                       r"_tests:provide but importing it failed: No module named .*pip install "
                       r"'cityenv\[town\]'"):  # fmt: skip
        stand_in(None, progress=False)
