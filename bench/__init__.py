"""kvmgr's benchmark runner: each figure measured side by side with its baseline in one run.

``bench/run`` is the entry point (``make bench``); the modules here hold one benchmark each plus
the shared parts (timing, ratios, the result table and JSON, the test-driver file generator).
"""
