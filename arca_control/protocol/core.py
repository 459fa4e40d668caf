"""The protocol's rules, with no I/O: request ids, the handshake, and reply matching.

Both ends of the control channel keep their protocol state here, as plain
objects fed with frames and asked for frames, so any I/O library can drive
them and tests need no sockets (the h11 design).

The rules, which the trio session and the monitor rely on:

* The guest's first request is Hello. The monitor answers it with HelloOk, or
  with Error and closes the session (wrong version, or anything else first).
* The guest allocates request ids: 1, 2, ... wrapping before 2**32, never 0
  and never one still pending. Id 0 marks the monitor's unsolicited events.
* Every request but Cancel gets exactly one reply, carrying its id, and only a
  reply type listed for it in ``messages.REPLIES``. Replies come in any order.
  Cancel never gets a reply: the monitor only ever acts on it or ignores it.
* HelloOk grants capabilities (the Hello's, intersected with the monitor's);
  a request needing one not granted is refused with EOPNOTSUPP.
* A reply carrying a connection (AcceptOk, ConnectOk) comes with exactly two
  file descriptors, their socket-channel forms and UdpBindOk with one, every
  other frame with none (``Message.FDS``).
* Cancel(target) withdraws a pending Accept or Connect. The target still gets
  exactly one reply: ECANCELED if the monitor withdrew it, or the reply it had
  already sent. The guest may give up on any request; a reply that comes after
  is late, and what comes with it is kept or closed, never leaked: an accepted
  connection goes to its listener's backlog, a late listener is closed again,
  any other connection or socket has its descriptors closed
  (``client.LateAction``).
"""

from __future__ import annotations

import enum

from . import errors
from .messages import Accept, Connect, Message


class SessionState(enum.Enum):
    HANDSHAKE = "handshake"  # Hello not yet answered
    READY = "ready"
    CLOSED = "closed"


#: Requests a guest may withdraw with Cancel.
CANCELLABLE = (Accept, Connect)


def check_fds(msg: Message, fds: list[int]) -> None:
    if len(fds) != msg.FDS:
        raise errors.UnexpectedMessage(
            f"{type(msg).__name__} came with {len(fds)} file descriptors, expected {msg.FDS}",
            request_id=msg.request_id,
        )


