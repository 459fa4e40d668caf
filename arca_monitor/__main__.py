"""``python -m arca_monitor``: the same as the ``arca-monitor`` command."""

import sys

from .cli import main

sys.exit(main())
