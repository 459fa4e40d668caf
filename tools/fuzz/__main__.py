"""``python -m tools.fuzz``: run the frame fuzzer (see ``cli.py``)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
