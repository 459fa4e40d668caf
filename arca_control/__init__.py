"""arca_control: the guest side of arca, real networking through a host monitor.

    async with arca_control.open_session() as session:
        listener = await session.listen("127.0.0.1", 0)
        stream = await session.connect("127.0.0.1", 8080)

The layers, each depending only on those before it: ``wire`` (field layouts),
``messages`` (typed messages), ``codec`` (bytes), ``core`` (protocol rules, no
I/O), ``channel`` (frames and fds over a socket), ``stream`` and ``session``
(the trio API). Beside them, for code that is not trio: ``portal`` (a
session in a thread of its own), ``sync`` (blocking), ``aio`` (asyncio) and
``transparent`` (``install()``: the process's own sockets, through the monitor).
"""

from .protocol.codec import FrameDecoder, decode, encode
from .protocol.errors import (
    ArcaError,
    LocalProtocolError,
    MonitorGone,
    ProtocolError,
    RemoteProtocolError,
)
from .protocol.wire import PROTOCOL_VERSION, Endpoint
from .session import ArcaSession, attach_session, open_session
from .stream import ArcaListener, ArcaStream
from .transparent import install, uninstall

__all__ = [
    "PROTOCOL_VERSION",
    "ArcaError",
    "ArcaListener",
    "ArcaSession",
    "ArcaStream",
    "Endpoint",
    "FrameDecoder",
    "LocalProtocolError",
    "MonitorGone",
    "ProtocolError",
    "RemoteProtocolError",
    "attach_session",
    "decode",
    "encode",
    "install",
    "open_session",
    "uninstall",
]
