"""Drover's benchmarks, beside the bare message bus they run on: ``python -m bench``.

Not part of the test run. See docs/performance.md for what each one measures, how to
run it, and the latest figures.
"""
