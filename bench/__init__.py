"""Benchmarks of the click path and the postback path beside their ceilings (issue 5).

Run ``python -m bench.run --quick`` (smoke, under a minute) or ``--full``; see
docs/benchmarks.md for the method and the figures.
"""
