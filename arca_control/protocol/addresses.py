"""Checking the addresses a guest passes, the way the socket module would, before they go on the wire.

Only literals pass: IPv4 and IPv6 (with a scope id, where an interface name
becomes its index on the guest's side) and absolute AF_UNIX paths. Names are
resolved by the monitor (``ArcaSession.resolve``), never here.
"""

from __future__ import annotations

import ipaddress
import os
import socket

from .wire import UNIX_PATH_MAX, AddressFamily, Endpoint, ipv6_host, parse_ip


def ip_endpoint(host: str, port: int) -> Endpoint:
    """Check an address the way socket.connect would, before it goes on the wire.

    IPv4 or IPv6 literals; an IPv6 scope may name an interface (``fe80::1%eth0``),
    which becomes its index here, on the guest's side.
    """
    if isinstance(host, str) and "%" in host:
        address, _, scope = host.partition("%")
        if not scope.isdigit():
            try:
                host = f"{address}%{socket.if_nametoindex(scope)}"
            except OSError:
                raise ValueError(f"no interface {scope!r} for the scope of {host!r}") from None
    try:
        family, packed, scope_id = parse_ip(host)
    except (ValueError, TypeError):
        raise ValueError(f"{host!r} is not an IP address literal") from None
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be 0-65535, not {port!r}")
    canonical = str(ipaddress.IPv4Address(packed)) if family == AddressFamily.IPV4 else ipv6_host(packed, scope_id)
    return Endpoint(canonical, port)


def unix_endpoint(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> Endpoint:
    """Check an AF_UNIX path the way socket.connect would: absolute, no NUL, short enough."""
    path = os.fsdecode(path)
    if path.startswith(("\0", "@")):
        raise ValueError(f"abstract-namespace names are refused: {path!r}")
    if not path.startswith("/"):
        raise ValueError(f"an AF_UNIX path must be absolute: {path!r}")
    if "\0" in path or len(path.encode()) > UNIX_PATH_MAX:
        raise ValueError(f"not a usable AF_UNIX path (NUL, or over {UNIX_PATH_MAX} bytes): {path!r}")
    return Endpoint(path, 0)
