"""The audit log: one JSON object per line for every request and every connection's life.

Written with ``--audit-log FILE`` (appended), or ``-`` for stderr; never to
stdout, which may carry a guest's data. Each line has ``ts`` (Unix time),
``session`` and ``event``:

* ``request``: ``request_id``, ``op`` (the message name), what it names
  (``endpoint``, ``listener_id``, ``name``, ...) and ``decision``:
  ``allowed``, ``denied`` (with ``reason``, naming the missing rule), or
  ``failed`` (with ``errno`` and ``reason``);
* ``open``: a connection handed to the guest (``connection_id``, ``via``
  accept or connect, ``channel`` pipes or socket, ``local``, ``peer``);
* ``guest_eof`` / ``peer_eof``: a half-close, by the guest or by the peer;
* ``close``: the connection is gone, with ``bytes_up`` (guest to peer),
  ``bytes_down``, ``seconds``, and ``how`` (closed, reset by the peer as an
  errno, or aborted).
"""

from __future__ import annotations

import contextlib
import enum
import json
import sys
import time
from typing import TextIO

from arca_control.protocol.wire import Endpoint


def shown(value: object) -> object:
    """A field as the audit log writes it: endpoints as host:port (or the path), enums by name."""
    if isinstance(value, Endpoint):
        if value.is_unix:
            return value.host
        return f"[{value.host}]:{value.port}" if ":" in value.host else f"{value.host}:{value.port}"
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, tuple):
        return [shown(item) for item in value]
    return value


class AuditLog:
    """Resource handling: owns the file it opened (not stderr); :meth:`close` closes it."""

    def __init__(self, target: str | None) -> None:
        self._file: TextIO | None = None
        # What close() closes: the file opened here (never stderr), handed over by pop_all() as contextlib's docs do.
        self._owned = contextlib.ExitStack()
        if target == "-":
            self._file = sys.stderr
        elif target is not None:
            with contextlib.ExitStack() as stack:
                self._file = stack.enter_context(open(target, "a", encoding="utf-8"))
                self._owned = stack.pop_all()

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def write(self, session: int, event: str, **fields: object) -> None:
        if self._file is None:
            return
        record = {"ts": round(time.time(), 6), "session": session, "event": event, **fields}
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._owned.close()
