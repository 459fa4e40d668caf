"""What a launcher (arca-run) hands a guest process: the environment both sides read.

The launcher is part of the monitor and the guest's APIs are not, so the
names they agree on live here, in the layer both depend on.
"""

from __future__ import annotations

import os

#: The socket path of the monitor a guest attaches to (under arca-run only with ``--allow-unix-sockets``).
MONITOR_ENV = "ARCA_MONITOR"
#: Under arca-run: the number of an inherited, connected AF_UNIX SOCK_SEQPACKET descriptor, the
#: monitor's *doorbell*. A guest opens a session by making a ``socketpair`` and sending one end over
#: it (one message, :data:`DOORBELL_RING`, one descriptor by SCM_RIGHTS); the monitor serves a
#: session on that end. It works where ``socket(AF_UNIX)`` is refused (arca-run's seccomp filter).
MONITOR_FD_ENV = "ARCA_MONITOR_FD"
#: The bytes that ride with the descriptor a guest sends on the doorbell.
DOORBELL_RING = b"session"


def package_root() -> str:
    """The directory that holds the ``arca_control`` package."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
