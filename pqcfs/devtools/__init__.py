"""Helpers for the demo, the benchmarks and the tests (not used by the product itself)."""
