"""Which socket options a guest may set and read, and applying them to the real socket.

The guest names an option by its Linux (level, name) pair; the monitor applies
only the ones listed here, on the kernel socket, and answers with the value the
kernel reports afterwards (SO_RCVBUF, for one, comes back doubled). Anything
else is ENOPROTOOPT. Bind-time options (SO_REUSEADDR, SO_REUSEPORT) can be read
here but are set through Listen's flags, because they only mean something
before bind.
"""

from __future__ import annotations

import errno
import socket

from arca_control.protocol.messages import GetOption, OptionValue, SetOption

#: Options a guest may set, for the socket kinds they make sense on.
SETTABLE: dict[tuple[int, int], str] = {
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE): "SO_KEEPALIVE",
    (socket.IPPROTO_TCP, socket.TCP_NODELAY): "TCP_NODELAY",
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE): "TCP_KEEPIDLE",
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL): "TCP_KEEPINTVL",
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT): "TCP_KEEPCNT",
    (socket.SOL_SOCKET, socket.SO_RCVBUF): "SO_RCVBUF",
    (socket.SOL_SOCKET, socket.SO_SNDBUF): "SO_SNDBUF",
    (socket.IPPROTO_IP, socket.IP_TTL): "IP_TTL",
    (socket.SOL_SOCKET, socket.SO_BROADCAST): "SO_BROADCAST",
}

#: Options a guest may only read: set at bind time, through Listen's flags.
READABLE: dict[tuple[int, int], str] = {
    **SETTABLE,
    (socket.SOL_SOCKET, socket.SO_REUSEADDR): "SO_REUSEADDR",
    (socket.SOL_SOCKET, socket.SO_REUSEPORT): "SO_REUSEPORT",
    (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY): "IPV6_V6ONLY",
}


def set_option(sock: socket.socket, level: int, name: int, value: int) -> int:
    """Apply one allowed option and return the kernel's value. Raises OSError."""
    if (level, name) not in SETTABLE:
        if (level, name) in READABLE:
            raise OSError(errno.EINVAL, f"{READABLE[level, name]} is set when binding (a Listen or UdpBind flag), not afterwards")
        raise OSError(errno.ENOPROTOOPT, f"option ({level}, {name}) is not one the monitor applies")
    if value > 0x7FFFFFFF:
        raise OSError(errno.EINVAL, f"value {value} is out of range")
    sock.setsockopt(level, name, value)
    return sock.getsockopt(level, name)


def get_option(sock: socket.socket, level: int, name: int) -> int:
    """The kernel's value of one allowed option. Raises OSError."""
    if (level, name) not in READABLE:
        raise OSError(errno.ENOPROTOOPT, f"option ({level}, {name}) is not one the monitor reads")
    return sock.getsockopt(level, name)


def answer(request: SetOption | GetOption, sock: socket.socket) -> OptionValue:
    """The reply to an option request on ``sock``: the value set and read back, or read. Raises OSError."""
    if isinstance(request, SetOption):
        value = set_option(sock, request.level, request.name, request.value)
    else:
        value = get_option(sock, request.level, request.name)
    return OptionValue(request_id=request.request_id, value=value & 0xFFFFFFFF)
