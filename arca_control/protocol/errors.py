"""The one error hierarchy of arca, each class mapped to the errno the guest sees.

Every exception arca raises itself is an ``OSError`` subclass carrying a real
errno, so a guest can treat it like any other socket error. Errors the monitor
reports for a request (a refused connect, an address in use) are not classes of
ours at all: they arrive as an errno and become the stdlib's own subclass
(``ConnectionRefusedError`` and so on) through :func:`error_from_errno`.

Like h11, we tell apart who broke the protocol:

* :class:`RemoteProtocolError` -- the peer sent bytes that are not a valid
  frame. Its subclasses name the cause. ``decode`` raises nothing else.
* :class:`LocalProtocolError` -- this side tried something the protocol does
  not allow (a request in the wrong state, a value that does not fit its field).

Each class carries its errno as a class attribute, so the error code that goes
back over the wire is decided here and nowhere else.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class ArcaError(OSError):
    """Root of the exceptions arca raises itself."""

    errno_code: int = _errno.EIO

    def __init__(self, message: str, *, request_id: int | None = None) -> None:
        super().__init__(self.errno_code, message)
        #: The request id of the offending frame, when its header could be read.
        self.request_id = request_id

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[Callable[[type[ArcaError], str, int | None], ArcaError], tuple[type[ArcaError], str, int | None]]:
        # Keep pickling (and copy) working with our signature.
        return (_rebuild, (type(self), str(self.strerror), self.request_id))


def _rebuild(cls: type[ArcaError], message: str, request_id: int | None) -> ArcaError:
    return cls(message, request_id=request_id)


class ProtocolError(ArcaError):
    """The control protocol was violated, by either side."""

    errno_code = _errno.EPROTO


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that is not a valid frame or not valid now."""


class TruncatedFrame(RemoteProtocolError):
    """Fewer bytes than the header, or than the header's length, promise."""


class TrailingBytes(RemoteProtocolError):
    """Bytes left over after a whole frame, or after a payload's last field."""


class OversizedFrame(RemoteProtocolError):
    """The header announces a payload larger than the agreed maximum."""

    errno_code = _errno.EMSGSIZE


class UnknownMessageType(RemoteProtocolError):
    """The type byte names no message of this protocol version."""

    errno_code = _errno.EBADMSG


class InvalidField(RemoteProtocolError):
    """A payload field is out of range, or a length inside the payload lies."""

    errno_code = _errno.EBADMSG


class UnsupportedVersion(RemoteProtocolError):
    """A Hello names a protocol version this side does not speak."""

    errno_code = _errno.EPROTONOSUPPORT


class UnexpectedMessage(RemoteProtocolError):
    """A well-formed message that is not allowed here (wrong direction or state)."""


class MonitorGone(ArcaError):
    """The control channel to the monitor is closed: the monitor exited or died."""

    errno_code = _errno.ECONNABORTED


#: The class made for each stdlib OSError subclass, made once: (errno, message) to the error.
_STREAM_ERRORS: dict[type[OSError], Callable[[int, str], Exception]] = {}


def stream_failure(code: int, message: str) -> Exception:
    """The error a stream raises when its connection failed with ``code``.

    It is both a ``trio.BrokenResourceError`` (what trio's stream contract
    says a broken stream raises) and the stdlib ``OSError`` subclass for the
    errno, so ``except ConnectionResetError`` works as it does on a socket.
    """
    import trio  # the codec layers never import trio; only streams need this

    base = type(OSError(code, ""))
    cls = _STREAM_ERRORS.get(base)
    if cls is None:
        cls = type(f"Broken{base.__name__}", (trio.BrokenResourceError, base), {"__module__": __name__})
        _STREAM_ERRORS[base] = cls
    return cls(code, f"{os.strerror(code)}: {message}")


def error_from_errno(code: int, message: str = "") -> OSError:
    """The stdlib exception for an errno the monitor reported, with its message.

    ``OSError(errno, ...)`` already picks the matching subclass
    (``ConnectionRefusedError`` for ECONNREFUSED, and so on).
    """
    text = os.strerror(code)
    if message and message != text:
        text = f"{text}: {message}"
    return OSError(code, text)
