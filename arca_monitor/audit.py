"""The audit log: one JSON object per line for every request and every connection's life.

Written with ``--audit-log FILE`` (appended), or ``-`` for stderr; never to
stdout, which may carry a guest's data. Each line has ``ts`` (Unix time),
``session`` and ``event``:

* ``request``: ``request_id``, ``op`` (the message name), what it names
  (``endpoint``, ``listener_id``, ``name``, ...) and ``decision``:
  ``allowed``, ``denied`` (with ``reason``, naming the missing rule, and
  ``rule``, the option that would allow exactly this request, such as
  ``--allow-connect 127.0.0.1:8000``), or ``failed`` (with ``errno`` and
  ``reason``);
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
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from collections.abc import Iterator

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
    """The audit log, written to ``file``; None is no audit log at all.

    Resource handling: the log never owns its file; :meth:`to` opens one for
    the length of a ``with``.
    """

    def __init__(self, file: TextIO | None) -> None:
        self._file = file

    @classmethod
    @contextlib.contextmanager
    def to(cls, target: str | None) -> Iterator[AuditLog]:
        """The log ``--audit-log`` asks for: None (none), ``-`` (stderr) or a file, appended to and closed after."""
        if target is None or target == "-":
            yield cls(None if target is None else sys.stderr)
            return
        with open(target, "a", encoding="utf-8") as file:
            yield cls(file)

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def write(self, session: int, event: str, **fields: object) -> None:
        if self._file is None:
            return
        record = {"ts": round(time.time(), 6), "session": session, "event": event, **fields}
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()

