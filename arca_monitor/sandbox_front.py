"""Everything a sandbox's programs send out, served: intercepted TCP, DNS, and the record of refused UDP.

:func:`serve_sandbox` is what the monitor runs for the sandbox arca-run
started (``sandbox.monitor``), for as long as the sandbox lives. It makes
the sandbox's one :class:`~.broker.Broker`, under audit session
:data:`SANDBOX_SESSION` (0: guest sessions over the control protocol are
numbered from 1, and keep brokers of their own), and one
:class:`~.name_pool.NamePool` shared by the two servers that need it:

* the intercept front end (:mod:`.intercept`) on ``sandbox.intercept``: every
  TCP connection out, decided by the policy, connected from the host, relayed;
* the sandbox's DNS server (:mod:`.sandbox_dns`) on ``sandbox.dns_udp`` and
  ``sandbox.dns_tcp``: every query answered here from the resolve rules,
  allowed names with pool addresses, nothing forwarded. Each query is
  audited as "dns" (``transport``, ``name``, ``type``, ``decision``,
  ``rcode``, ``reason``, ``answer``, and for a denied one ``rule``, the
  option that would allow it); a denied one counts as a denial.
* the published ports (:mod:`.publish`): each connection to one of arca-run's
  ``--publish`` listeners relayed to its port on the sandbox's loopback;
* refused UDP (``sandbox.receive_refusals``): each datagram the rules refused
  is audited as "udp_refused" (``source``, ``destination``, ``uid``,
  ``bytes``, ``decision`` "denied", ``reason``, and ``rule`` null: no rule
  allows it) and counts as a denial, and records the kernel could not deliver as
  "udp_refused_unreadable" with a ``count``. General UDP is a later step.
* the command's seccomp filter (``sandbox.listener``, once handed over): each
  call it sends is answered by :mod:`.seccomp_supervisor`, its refusals
  audited as "seccomp" and counted as denials.

When it ends (the sandbox is gone, or the monitor stops), it writes one
"summary" line: ``connections`` opened in all (intercepted and published),
``still_open``, ``denials`` (every refusal above), ``bytes_up`` and
``bytes_down``: the totals a guest session reads with Stats, for the
sandbox, which has no control session to ask with.

Resource handling: the DNS server gets duplicates of the sandbox's DNS
sockets and closes them when it ends; the sandbox's own stay the handle's.
Error handling: every server goes on past what a program does (see each
module); only cancellation ends :func:`serve_sandbox`.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import trio

from .audit import shown
from .broker import Broker
from .intercept import Intercept
from .name_pool import NamePool
from .publish import Publisher
from .sandbox_dns import Decision, QueryRecord, SandboxDNS, policy_decisions
from .seccomp_notify import Listener
from .seccomp_supervisor import Supervisor

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .audit import AuditLog
    from .config import Config
    from .policy import Policy
    from .publish import Published
    from .resolver import Resolver
    from .sandbox.handle import Sandbox

#: The audit session of everything the sandbox's programs do outside the control protocol.
SANDBOX_SESSION = 0


def _duplicate(sock: trio.socket.SocketType) -> socket.socket:
    return socket.socket(fileno=socket.dup(sock.fileno()))


async def serve_sandbox(
    sandbox: Sandbox, config: Config, policy: Policy, resolver: Resolver, audit: AuditLog, *,
    pool: NamePool | None = None, published: Sequence[Published] = (),
) -> None:
    """Serve every socket of ``sandbox`` until cancelled (see the module's docstring)."""
    broker = Broker(config, policy, resolver, audit, SANDBOX_SESSION)
    pool = pool or NamePool()

    def audit_query(record: QueryRecord) -> None:
        if record.decision is Decision.DENIED:
            broker.denials += 1
        broker.record("dns", transport=record.transport.value, name=record.name, type=record.rdtype,
                      decision=record.decision.value, rcode=record.rcode, reason=record.reason or None,
                      answer=record.answer, **({"rule": record.rule} if record.decision is Decision.DENIED else {}))

    dns = SandboxDNS(policy_decisions(policy, resolver, audit_query), pool)
    intercept = Intercept(broker, pool)
    try:
        async with trio.open_nursery() as nursery:
            for listener in sandbox.intercept:
                nursery.start_soon(intercept.serve, listener)
            udp = [_duplicate(sock) for sock in sandbox.dns_udp]
            tcp = [_duplicate(sock) for sock in sandbox.dns_tcp]
            nursery.start_soon(dns.serve, udp, tcp)
            nursery.start_soon(record_refusals, sandbox, broker)
            nursery.start_soon(supervise, sandbox, broker)
            publisher = Publisher(broker, sandbox)
            for port in published:
                nursery.start_soon(publisher.serve, port)
    finally:
        broker.record_summary()


#: Why a UDP datagram was refused: no rule can allow it (so its audit line's ``rule`` is null).
UDP_REFUSED = "UDP other than DNS never leaves the sandbox: no rule allows it"


async def record_refusals(sandbox: Sandbox, broker: Broker) -> None:
    """Audit every UDP datagram the sandbox's rules refused, until cancelled."""
    while True:
        batch = await sandbox.receive_refusals()
        for refusal in batch.refusals:
            broker.denials += 1
            broker.record("udp_refused", source=shown(refusal.source), destination=shown(refusal.destination),
                          uid=refusal.uid, bytes=refusal.length, decision="denied", reason=UDP_REFUSED, rule=None)
        if batch.unreadable:
            broker.record("udp_refused_unreadable", count=batch.unreadable)


async def supervise(sandbox: Sandbox, broker: Broker) -> None:
    """Answer the command's seccomp filter once its listener arrives, until no process is left under it."""
    await sandbox.supervised.wait()
    if sandbox.listener is not None:
        await Supervisor(Listener(sandbox.listener), broker).serve()
