"""Checking the addresses a guest passes, the way the socket module would, before they go on the wire.

Only literals pass: IPv4 and IPv6 (with a scope id, where an interface name
becomes its index on the guest's side) and absolute AF_UNIX paths. Names are
resolved by the monitor (``ArcaSession.resolve``), never here. Both parse
through ``endpoint.parse_host``, once: what they return is the Endpoint the
wire carries as it is.
"""

from __future__ import annotations

import os

from .values import UNIX_PATH_MAX, AddressFamily, Endpoint, ScopeError, parse_host


def ip_endpoint(host: str, port: int) -> Endpoint:
    """Check an address the way socket.connect would, before it goes on the wire.

    IPv4 or IPv6 literals; an IPv6 scope may name an interface (``fe80::1%eth0``),
    which becomes its index here, on the guest's side. ValueError if it is none.
    """
    try:
        family, packed, scope_id = parse_host(host, interface_names=True)
    except ScopeError:
        raise
    except (ValueError, TypeError):
        family = AddressFamily.UNIX
    if family == AddressFamily.UNIX:  # not a literal (a path is not one either)
        raise ValueError(f"{host!r} is not an IP address literal")
    try:
        return Endpoint.from_packed(family, packed, port, scope_id)
    except (ValueError, TypeError):
        raise ValueError(f"port must be 0-65535, not {port!r}") from None


def unix_endpoint(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> Endpoint:
    """Check an AF_UNIX path the way socket.connect would: absolute, no NUL, short enough."""
    path = os.fsdecode(path)
    if path.startswith(("\0", "@")):
        raise ValueError(f"abstract-namespace names are refused: {path!r}")
    if not path.startswith("/"):
        raise ValueError(f"an AF_UNIX path must be absolute: {path!r}")
    try:
        return Endpoint(path, 0)
    except ValueError:
        raise ValueError(f"not a usable AF_UNIX path (NUL, or over {UNIX_PATH_MAX} bytes): {path!r}") from None
