"""Where an intercepted connection was going: the address the sandbox's program connected to.

The sandbox's rules redirect each connection out to an intercept listener;
conntrack remembers the destination it had before, and ``SO_ORIGINAL_DST``
(IPv4, at SOL_IP) or ``IP6T_SO_ORIGINAL_DST`` (IPv6, at SOL_IPV6, which is IPPROTO_IPV6; both 80)
reads it back from the accepted socket, as a ``sockaddr_in`` or
``sockaddr_in6``. This works from any namespace: the socket remembers its own.

Error handling: OSError from the kernel as it is (ENOENT for a connection
conntrack did not redirect), EAFNOSUPPORT for a socket that is not IP.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import TYPE_CHECKING

from arca_control.protocol.wire import Endpoint, ipv6_host

if TYPE_CHECKING:
    import trio

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28


def original_destination(sock: socket.socket | trio.socket.SocketType) -> Endpoint:
    """The destination a redirected connection had before the sandbox's rules sent it here."""
    if sock.family == socket.AF_INET:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)
        (port,) = struct.unpack_from(">H", raw, 2)
        return Endpoint(socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6)
        (port,) = struct.unpack_from(">H", raw, 2)
        (scope_id,) = struct.unpack_from("=I", raw, 24)
        return Endpoint(ipv6_host(raw[8:24], scope_id), port)
    raise OSError(errno.EAFNOSUPPORT, f"no original destination for a {sock.family!r} socket")
