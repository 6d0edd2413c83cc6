"""Core layer: geometry, scans, operators, the Problem, metrics, option checks and file I/O.

Imports nothing of ctdip above it (``tests/test_layers.py``); ``io`` is its bottom, usable everywhere."""
