"""What the monitor does with a sandbox's sockets until the broker's intercept front end exists: refuse, and say so.

THE SEAM: :func:`serve_sandbox` is the one function the intercept front end
replaces. It gets the :class:`~.handle.Sandbox` and runs for as long as the
sandbox does; the front end will accept on ``sandbox.intercept``, ask
:func:`~.destination.original_destination` where each connection was going,
decide by policy and relay; answer ``sandbox.dns_udp``/``dns_tcp`` from the
resolver; and audit what :meth:`~.handle.Sandbox.receive_refusals` reports.

Until then nothing a program in the sandbox does may hang, and nothing is
relayed anywhere:

* an intercepted TCP connection is accepted, audited (``intercept``,
  ``decision`` denied, ``reason`` "no intercept front end yet", with its
  ``source`` and ``destination``) and reset: the program's connect, or its
  first read or write, fails with ECONNRESET;
* a DNS query over UDP is answered REFUSED, audited (``dns``, ``name``,
  ``type``); over TCP, the connection is reset, audited the same way;
* every refused UDP datagram is audited (``udp_refused``, ``source``,
  ``destination``, ``uid``, ``bytes``; ``udp_refused_unreadable`` with a
  ``count`` for records the kernel dropped or that could not be read).

The sandbox's audit records carry session 0: they belong to no guest session.
Error handling: a failed accept or send is logged and the loop goes on (a
guest cannot end it); a query that is not DNS gets no answer.
"""

from __future__ import annotations

import logging
import socket
import struct
from typing import TYPE_CHECKING

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import trio

from arca_control.protocol.wire import Endpoint

from .destination import original_destination

if TYPE_CHECKING:
    from ..audit import AuditLog
    from .handle import Sandbox

log = logging.getLogger("arca_monitor.sandbox")

SANDBOX_SESSION = 0
NO_FRONT_END = "no intercept front end yet"
NO_DNS_FRONT_END = "no DNS front end yet"
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 seconds: close sends RST


async def serve_sandbox(sandbox: Sandbox, audit: AuditLog) -> None:
    """Serve every socket of ``sandbox`` until cancelled (the seam; see the module's docstring)."""
    async with trio.open_nursery() as nursery:
        for listener in sandbox.intercept:
            nursery.start_soon(refuse_connections, listener, audit, "intercept", NO_FRONT_END)
        for listener in sandbox.dns_tcp:
            nursery.start_soon(refuse_connections, listener, audit, "dns", NO_DNS_FRONT_END)
        for sock in sandbox.dns_udp:
            nursery.start_soon(refuse_queries, sock, audit)
        nursery.start_soon(record_refusals, sandbox, audit)


def shown(where: Endpoint | tuple[str, int] | tuple[str, int, int, int] | None) -> str | None:
    """An address as the audit log writes it: host:port, [host]:port for IPv6."""
    if where is None:
        return None
    host, port = Endpoint.from_sockaddr(where) if not isinstance(where, Endpoint) else where
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def refuse_connections(listener: trio.socket.SocketType, audit: AuditLog, event: str, reason: str) -> None:
    while True:
        try:
            conn, peer = await listener.accept()
        except OSError as exc:  # EMFILE and friends: wait a little rather than spin
            log.error("sandbox %s listener: accept failed: %s", event, exc)
            await trio.sleep(0.1)
            continue
        with conn:
            try:
                destination: Endpoint | None = original_destination(conn)
            except OSError:
                destination = None
            audit.write(SANDBOX_SESSION, event, source=shown(peer), destination=shown(destination),
                        decision="denied", reason=reason)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)


def refused_answer(query: bytes) -> tuple[bytes, str, str] | None:
    """A REFUSED answer to ``query``, with the name and type it asked for; None if it is not a DNS query."""
    try:
        message = dns.message.from_wire(query)
        answer = dns.message.make_response(message)
    except dns.exception.DNSException:
        return None
    answer.set_rcode(dns.rcode.REFUSED)
    if not message.question:
        return answer.to_wire(), "", ""
    question = message.question[0]
    return answer.to_wire(), question.name.to_text(), dns.rdatatype.to_text(question.rdtype)


async def refuse_queries(sock: trio.socket.SocketType, audit: AuditLog) -> None:
    while True:
        try:
            query, peer = await sock.recvfrom(65535)
        except OSError as exc:
            log.warning("sandbox DNS socket: %s", exc)
            await trio.sleep(0.1)
            continue
        refused = refused_answer(query)
        if refused is None:
            audit.write(SANDBOX_SESSION, "dns", source=shown(peer), decision="failed", reason="not a DNS query")
            continue
        answer, name, rdtype = refused
        audit.write(SANDBOX_SESSION, "dns", source=shown(peer), name=name, type=rdtype,
                    decision="denied", reason=NO_DNS_FRONT_END)
        try:
            await sock.sendto(answer, peer)
        except OSError as exc:
            log.warning("sandbox DNS socket: answering %s: %s", peer, exc)


async def record_refusals(sandbox: Sandbox, audit: AuditLog) -> None:
    while True:
        batch = await sandbox.receive_refusals()
        for refusal in batch.refusals:
            audit.write(SANDBOX_SESSION, "udp_refused", source=shown(refusal.source),
                        destination=shown(refusal.destination),
                        uid=refusal.uid, bytes=refusal.length)
        if batch.unreadable:
            audit.write(SANDBOX_SESSION, "udp_refused_unreadable", count=batch.unreadable)
