"""Benchmark arca against plain TCP and a socat relay, every case side by side in one run.

Run it with ``python -m tools.bench``; ``cli.py`` says how (cases, sizes, output).

The modules: ``base`` (sizes, units, statistics), ``processes`` (helper processes
and /proc readings), ``helpers/`` (the peer programs), one module per group of
cases (``transfers``: a, b, c; ``connects``: d, e; ``codec``: f; ``scale``: g; ``curl``: h;
``programs``: i),
``run`` (running the chosen cases), ``report`` (rows, ratios, targets, the table
and JSON) and ``cli``.
"""
