"""Harnesses for outside reference systems, used only by tests and benchmarks."""
