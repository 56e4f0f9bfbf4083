"""Benchmark harnesses (the generalisation matrix); not used by the commands."""
