"""The parts of ``scripts/bench.py``, gocp's benchmark (run that script, not this package).

- ``results``: the settings of a run, and its results as tables of rows of samples.
- ``timing``: timed loops with the collector off, calibration, interleaved sampling.
- ``placement``: pinning the benchmark's threads and the echo server to CPUs.
- ``echo``: the echo server in a subprocess, and sockets configured as gocp's members.
- ``roundtrips``: the echo round-trip loops and their threaded runner.
- ``subjects``: what lends members: the floor pools, gocp, and gocp before (``--baseline``).
- ``peers``: adapters that drive other Python pools the same way.
- ``scenarios``: one module per scenario, each with ``run(cfg) -> list[Table]``.
- ``targets``: the issues' targets, checked against one run's tables.
- ``report``: the printed tables and the JSON document.
- ``plot``: the ratios of one run as an SVG chart (``--plot``; needs matplotlib).
- ``cli``: the command line.
"""
