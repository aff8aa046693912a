"""cityenv: a real city as a simulator an agent can act in."""

from __future__ import annotations

__version__ = "0.1.0"
