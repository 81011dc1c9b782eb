"""Benchmarks: print speed ratios measured in one run (never asserted in tests)."""
