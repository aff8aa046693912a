"""cityenv: a real city as a simulator an agent can act in."""

from __future__ import annotations

from cityenv.envs.registration import register_envs

__version__ = "0.1.0"

register_envs()  # CityWorld-Town-v0, -Seoul-v0, -Busan-v0, -AnnArbor-v0 (string entry points)
