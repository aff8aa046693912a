"""cityenv.eval: ``python -m cityenv.eval``, the City-Bench evaluation of world models."""
