"""Benchmarks: scripts that drive a real daemon process against the sandbox and write figures.

Each module runs as ``python -m bench.NAME [--flags]``, prints a table and writes
``bench/results/NAME.json``. They are measurements, not tests: nothing here asserts, and a
missed target is reported, not raised. ``common`` holds what they share (processes, /proc
readings, the sandbox in its own process, the results file); see BENCHMARKS.md for figures.
"""
