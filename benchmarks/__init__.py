"""Benchmarks of relpos against a Swin/timm-style reference (not part of the tests).

Run everything with ``python -m benchmarks.run`` (``--quick`` for a short pass); results go to
``BENCHMARKS.md``.
"""
