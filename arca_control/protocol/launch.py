"""What a launcher (arca-run) hands a guest process: the environment both sides read.

The launcher is part of the monitor and the guest's APIs are not, so the
names they agree on live here, in the layer both depend on.
"""

from __future__ import annotations

import os

#: The socket path of the monitor a sandboxed guest must use.
MONITOR_ENV = "ARCA_MONITOR"
#: Set by ``arca-run --transparent``: the guest's interpreter installs transparent mode at startup.
TRANSPARENT_ENV = "ARCA_TRANSPARENT"
#: Site directories (os.pathsep) where arca_control and its dependencies live, for another interpreter.
SITE_ENV = "ARCA_SITE"


def site_hook_dir() -> str:
    """The directory holding the guest's ``sitecustomize`` hook, to put first on PYTHONPATH."""
    return os.path.join(package_root(), "arca_control", "_site")


def package_root() -> str:
    """The directory that holds the ``arca_control`` package."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
