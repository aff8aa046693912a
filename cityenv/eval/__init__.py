"""cityenv.eval: ``python -m cityenv.eval``, the City-Bench (an app above the library)."""
