"""``--publish [HOST_ADDR:]HOST_PORT:GUEST_PORT``: what it means, the host listener it binds, the line it prints.

arca-run parses each ``--publish`` (:func:`parse`), binds the host's
listener itself (:func:`bind`: so a port already taken is one line and a
non-zero exit before anything starts, and the port the kernel chose for
HOST_PORT 0 is known at once), prints :func:`announcement` for it, and hands
the listening socket to the monitor as ``--publish-fd N:GUEST_PORT``
(:func:`fd_option`, read back by :func:`parse_fd_option`), which relays each
connection to GUEST_PORT on the sandbox's own loopback (``publish``).

HOST_ADDR is an IP literal, IPv6 in brackets (``[::1]:0:8000``); without it
the listener is on the host's 127.0.0.1 only (pasta and docker listen on
every address by default; here listening beyond loopback must be asked for). This module uses only the
standard library: arca-run imports it before any monitor runs.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

#: Where a published port listens when --publish names no address: the host's own loopback only.
DEFAULT_HOST = "127.0.0.1"
BACKLOG = 128


class PublishError(ValueError):
    """A --publish or --publish-fd argument that does not say what it must."""


@dataclass(frozen=True)
class PublishSpec:
    """One ``--publish``: listen on ``host``:``host_port`` (0: the kernel chooses), relay to ``guest_port`` inside."""

    host: str
    host_port: int
    guest_port: int


def _port(text: str, what: str, lowest: int) -> int:
    if not text.isdigit() or not lowest <= int(text) <= 0xFFFF:
        raise PublishError(f"{what} must be a number {lowest}-65535, not {text!r}")
    return int(text)


def parse(text: str) -> PublishSpec:
    """The spec ``text`` (``[HOST_ADDR:]HOST_PORT:GUEST_PORT``) says; PublishError if it says none."""
    host = DEFAULT_HOST
    rest = text
    if text.startswith("["):
        bracketed, sep, rest = text[1:].partition("]:")
        if not sep:
            raise PublishError(f"--publish {text}: an IPv6 address in brackets must be followed by ':'")
        host = bracketed
    elif text.count(":") == 2:
        host, _, rest = text.partition(":")
    ports = rest.split(":")
    if len(ports) != 2:
        raise PublishError(f"--publish {text}: not [HOST_ADDR:]HOST_PORT:GUEST_PORT")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise PublishError(f"--publish {text}: {host!r} is not an IP address (IPv6 in brackets)") from None
    if text.startswith("[") != (address.version == 6):
        raise PublishError(f"--publish {text}: an IPv6 address goes in brackets, an IPv4 address does not")
    return PublishSpec(str(address), _port(ports[0], f"--publish {text}: HOST_PORT", 0),
                       _port(ports[1], f"--publish {text}: GUEST_PORT", 1))


def bind(spec: PublishSpec) -> socket.socket:
    """The host's listening socket for ``spec``; OSError (EADDRINUSE, EADDRNOTAVAIL...) if it cannot be had."""
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        # Another listener on the port still refuses the bind (EADDRINUSE); connections of an
        # earlier run left in TIME_WAIT do not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((spec.host, spec.host_port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def shown_address(sock: socket.socket) -> str:
    """Where ``sock`` is bound, as HOST:PORT ([HOST]:PORT for IPv6): the port the kernel chose if it was 0."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def announcement(sock: socket.socket, guest_port: int) -> str:
    """The line arca-run prints on stderr for a published port."""
    return f"published {shown_address(sock)} -> sandbox port {guest_port}"


def fd_option(sock: socket.socket, guest_port: int) -> str:
    """The value of the monitor's ``--publish-fd`` for ``sock`` (inherited by the monitor under its number)."""
    return f"{sock.fileno()}:{guest_port}"


def parse_fd_option(text: str) -> tuple[int, int]:
    """``(fd, guest_port)`` from a ``--publish-fd N:GUEST_PORT``; PublishError if it is not that."""
    fd, sep, guest = text.partition(":")
    if not sep or not fd.isdigit():
        raise PublishError(f"--publish-fd {text}: not N:GUEST_PORT")
    return int(fd), _port(guest, "GUEST_PORT", 1)
