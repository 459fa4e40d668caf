"""The project's developer tools, each a package run with ``python -m``: ``tools.bench`` and ``tools.fuzz``."""
