"""The sandbox's network, made by its init from inside the new namespace: lo, routes, rules, sockets.

:func:`set_up` brings ``lo`` up, gives it :data:`GATEWAY4` so that the IPv4
default route has a gateway on it (the kernel will not route IPv4 via ``lo``
without one), adds the IPv4 and IPv6 default routes via ``lo``, makes the
sockets the rules point at (each on a port the kernel picks), and installs
``ruleset.nft`` with those ports. ``ip`` (iproute2) and ``nft`` (nftables)
are run as programs.

Error handling: any step that fails raises :class:`SetupError` with a message
for a person; nothing is left half done that matters, since the namespace
dies with the init. Resource handling: on failure the sockets made so far are
closed; on success the caller owns :class:`Sockets` and closes it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, fields

from . import nflog
from .messages import Role

#: The address lo carries for the IPv4 default route's gateway (TEST-NET-1: routed nowhere, ever).
GATEWAY4 = "192.0.2.100"
RULESET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ruleset.nft")
#: Where ip and nft live when PATH lacks the sbin directories (a non-root user's PATH on Debian).
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
ROUTES = f"""\
link set lo up
address add {GATEWAY4}/32 dev lo
route add default via {GATEWAY4} dev lo src {GATEWAY4}
route add ::/0 dev lo
"""
LISTEN_BACKLOG = 4096
SETUP_TIMEOUT = 20.0


class SetupError(Exception):
    """The sandbox's network could not be set up; the command must not run."""


@dataclass(frozen=True)
class Sockets:
    """Every socket the init makes for the monitor, by its :class:`Role`."""

    intercept4: socket.socket
    intercept6: socket.socket
    dns_udp4: socket.socket
    dns_tcp4: socket.socket
    dns_udp6: socket.socket
    dns_tcp6: socket.socket
    udp_refusals: socket.socket

    def by_role(self) -> dict[Role, socket.socket]:
        return {Role[f.name.upper()]: getattr(self, f.name) for f in fields(self)}

    def port(self, role: Role) -> int:
        port: int = self.by_role()[role].getsockname()[1]
        return port

    def close(self) -> None:
        for sock in self.by_role().values():
            sock.close()


def _program(name: str) -> str:
    path = os.environ.get("PATH", os.defpath)
    found = shutil.which(name, path=os.pathsep.join([path, *SBIN]))
    if found is None:
        package = {"nft": "nftables", "ip": "iproute2"}[name]
        raise SetupError(f"{name} not found (Debian's {package} package; `make system-deps` installs it)")
    return found


def _run(*argv: str, given: str = "") -> None:
    try:
        done = subprocess.run(argv, input=given, capture_output=True, text=True, timeout=SETUP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"{' '.join(argv)}: {exc}") from None
    if done.returncode != 0:
        raise SetupError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")


def _bound(family: socket.AddressFamily, kind: socket.SocketKind, host: str, made: list[socket.socket]) -> socket.socket:
    sock = socket.socket(family, kind)
    made.append(sock)
    sock.bind((host, 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(LISTEN_BACKLOG)
    return sock


def _make_sockets() -> Sockets:
    made: list[socket.socket] = []
    v4, v6, tcp, udp = socket.AF_INET, socket.AF_INET6, socket.SOCK_STREAM, socket.SOCK_DGRAM
    try:
        refusals = nflog.bind()
        made.append(refusals)
        return Sockets(
            intercept4=_bound(v4, tcp, "127.0.0.1", made),
            intercept6=_bound(v6, tcp, "::1", made),
            dns_udp4=_bound(v4, udp, "127.0.0.1", made),
            dns_tcp4=_bound(v4, tcp, "127.0.0.1", made),
            dns_udp6=_bound(v6, udp, "::1", made),
            dns_tcp6=_bound(v6, tcp, "::1", made),
            udp_refusals=refusals,
        )
    except OSError as exc:
        for sock in made:
            sock.close()
        raise SetupError(f"cannot make the sandbox's sockets: {exc}") from None


def set_up() -> Sockets:
    """The sandbox's network, ready: every connection out of it now lands on one of the returned sockets."""
    ip, nft = _program("ip"), _program("nft")
    # One ip for all four (each process costs more than its command); ::/0 says IPv6 by itself.
    _run(ip, "-batch", "-", given=ROUTES)
    sockets = _make_sockets()
    try:
        defines = {role.name.lower(): sockets.port(role) for role in sockets.by_role() if role != Role.UDP_REFUSALS}
        _run(nft, *[arg for name, value in defines.items() for arg in ("-D", f"{name}={value}")], "-f", RULESET)
    except SetupError:
        sockets.close()
        raise
    return sockets
