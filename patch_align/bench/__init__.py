"""Benchmarks at named model shapes (`patch-align bench ...`); figures go to docs/performance.md."""
