"""The sandbox's DNS server: every query a sandboxed program makes, answered by the monitor, none forwarded.

The sandbox's nftables rules send every DNS query (UDP and TCP port 53,
whatever server resolv.conf names) to sockets the monitor holds; this module
serves them (:meth:`SandboxDNS.serve`). The decisions come in as callbacks
(:class:`Decisions`), so the server knows nothing of the broker beyond them.

Answers, for a name (lower case, without the final dot):

* ``host.arca.internal``: A with the pool's fixed host address, which the
  intercept maps to the host's 127.0.0.1 (and ::1); nothing else is asked.
  ``localhost`` and names under it: 127.0.0.1 and ::1 (RFC 6761), the
  sandbox's own loopback.
* A name no rule lets the guest resolve (``may_resolve`` raises Denied):
  NXDOMAIN, and ``lookup`` is never called, so no query leaves the monitor.
  Not REFUSED: glibc takes REFUSED like SERVFAIL, asks again and reports
  EAI_AGAIN ("Temporary failure in name resolution"), inviting retries that
  cannot succeed; NXDOMAIN fails at once with EAI_NONAME. The audit record
  says it was a denial and why.
* An allowed name: ``lookup`` must find it (the monitor's Resolver, with the
  rebinding filter, see ``policy.Policy.addresses_for``). Then an A query is
  answered with the name's pool address (``name_pool.NamePool``), TTL the pool's;
  AAAA and every other type answer NODATA (NOERROR, no records). The pool is
  IPv4, which is all the binding needs; a program asking for both families
  uses the A answer, and the monitor still reaches the name over IPv6 if
  that is what the name has. No such name: NXDOMAIN; the lookup failed or
  timed out, or the pool is exhausted: SERVFAIL; ``lookup`` raised Denied
  (every address refused): NXDOMAIN, as for any denial.
* PTR for a pool address: the name it stands for; for 127.0.0.1 and ::1,
  localhost; any other reverse name: NXDOMAIN (nothing is forwarded).
* Not a host name: NXDOMAIN. A class other than IN: REFUSED. An opcode other
  than QUERY: NOTIMP. EDNS above version 0: BADVERS. Not one question:
  FORMERR. Bytes that do not parse: FORMERR if a header can be read, else
  dropped; a datagram that is itself a response is dropped (no loops).

Every answer fits in a classic 512-byte UDP message (one record at most, and
a name is at most 255 bytes), so none is ever truncated. TCP carries messages
with a 2-byte length prefix, several per connection, one after another; a
connection ends after ``tcp_max_queries`` messages, ``tcp_idle_timeout``
seconds without a whole query, or ``tcp_lifetime`` seconds in all, and at the
first message that gets no answer (``dns_transport``). Every query is
reported to ``audit``.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset
import trio

from .dns_transport import DEFAULT_LIMITS, Limits, Transport, serve_dns
from .name_pool import HOST_NAME, PoolExhausted
from .policy import Denied
from .resolver import EAI_NODATA, EDNS_PAYLOAD, ResolveError, check_name

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from .name_pool import NamePool
    from .policy import Policy
    from .resolver import Resolver

log = logging.getLogger(__name__)

#: The smallest a DNS message can be: its header.
HEADER_SIZE = 12
_LOOPBACK_NAMES = {"127.0.0.1": "localhost", "::1": "localhost"}


class Decision(enum.Enum):
    ALLOWED = "allowed"
    DENIED = "denied"
    FAILED = "failed"


@dataclass(frozen=True)
class QueryRecord:
    """One query as the audit log sees it; ``answer`` is the address or name given, if any."""

    transport: Transport
    name: str
    rdtype: str
    decision: Decision
    rcode: str
    reason: str = ""
    answer: str | None = None
    #: For a denied query: the rule that would allow it (``Denied.rule``).
    rule: str | None = None


@dataclass(frozen=True)
class Decisions:
    """What the server asks the monitor.

    ``may_resolve(name)`` raises ``policy.Denied`` for a name no rule lets
    the guest resolve; ``lookup(name)`` gives the name's addresses or raises
    ``resolver.ResolveError`` (or Denied, if policy refuses every address);
    ``audit(record)`` gets every query.
    """

    may_resolve: Callable[[str], None]
    lookup: Callable[[str], Awaitable[Sequence[str]]]
    audit: Callable[[QueryRecord], None]


@dataclass
class _Outcome:
    rcode: dns.rcode.Rcode
    decision: Decision
    reason: str = ""
    records: list[dns.rrset.RRset] = field(default_factory=list)
    answer: str | None = None
    rule: str | None = None


class SandboxDNS:
    """Answers DNS queries for the sandbox from its policy and its name pool; see the module docstring."""

    def __init__(
        self, decisions: Decisions, pool: NamePool, *, lookup_timeout: float = 5.0, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.decisions = decisions
        self.pool = pool
        self.lookup_timeout = lookup_timeout
        self.limits = limits

    async def serve(
        self,
        udp: Sequence[socket.socket],
        tcp: Sequence[socket.socket],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer on bound UDP sockets and listening TCP sockets (taken over, closed at the end) until cancelled."""
        await serve_dns(self.answer, udp, tcp, self.limits, task_status=task_status)

    async def answer(self, data: bytes, transport: Transport = Transport.UDP) -> bytes | None:
        """The reply to one query message; None: no reply at all."""
        try:
            return await self._reply(data, transport)
        except Exception:  # a bug: this query gets no reply, and the server goes on
            log.exception("sandbox DNS: internal error on a %s query", transport.value)
            return None

    async def _reply(self, data: bytes, transport: Transport) -> bytes | None:
        if len(data) < HEADER_SIZE or data[2] & 0x80:
            self._audit(QueryRecord(transport, "", "", Decision.FAILED, "none", "dropped: no query header"))
            return None
        try:
            query = dns.message.from_wire(data)
        except Exception as error:  # untrusted bytes: whatever dnspython makes of them is a format error
            self._audit(QueryRecord(transport, "", "", Decision.FAILED, "FORMERR", f"malformed ({type(error).__name__})"))
            # The query's id, QR and its opcode and RD bits, RA, and FORMERR; no sections.
            return data[:2] + bytes([0x80 | (data[2] & 0x79), 0x80 | dns.rcode.FORMERR]) + bytes(8)
        response = dns.message.make_response(query, recursion_available=True, our_payload=EDNS_PAYLOAD)
        name, rdtype = "", ""
        try:
            if len(query.question) != 1:
                outcome = _Outcome(dns.rcode.FORMERR, Decision.FAILED, "not one question")
            else:
                question = query.question[0]
                name = question.name.to_text(omit_final_dot=True).lower()
                rdtype = dns.rdatatype.to_text(question.rdtype)
                outcome = await self._outcome(query, question.name, question.rdclass, question.rdtype)
        except Exception:  # a bug, or a callback gone wrong: the server goes on
            log.exception("sandbox DNS: internal error answering %r", name)
            outcome = _Outcome(dns.rcode.SERVFAIL, Decision.FAILED, "internal error")
        response.set_rcode(outcome.rcode)
        response.answer.extend(outcome.records)
        self._audit(QueryRecord(transport, name, rdtype, outcome.decision, dns.rcode.to_text(outcome.rcode),
                                outcome.reason, outcome.answer, outcome.rule))
        return response.to_wire()

    async def _outcome(
        self, query: dns.message.Message, qname: dns.name.Name, rdclass: dns.rdataclass.RdataClass,
        rdtype: dns.rdatatype.RdataType,
    ) -> _Outcome:
        if query.opcode() != dns.opcode.QUERY:
            return _Outcome(dns.rcode.NOTIMP, Decision.FAILED, f"opcode {dns.opcode.to_text(query.opcode())}")
        if query.edns > 0:
            return _Outcome(dns.rcode.BADVERS, Decision.FAILED, f"EDNS version {query.edns}")
        if rdclass != dns.rdataclass.IN:
            return _Outcome(dns.rcode.REFUSED, Decision.FAILED, f"class {dns.rdataclass.to_text(rdclass)}")
        if qname.is_subdomain(dns.reversename.ipv4_reverse_domain) or qname.is_subdomain(
            dns.reversename.ipv6_reverse_domain
        ):
            return self._reverse(qname, rdtype)
        try:
            name = check_name(qname.to_text(omit_final_dot=True))
        except ResolveError as error:
            return _Outcome(dns.rcode.NXDOMAIN, Decision.FAILED, error.message)
        if name == HOST_NAME:
            return self._fixed(qname, rdtype, self.pool.host_address, None)
        if name == "localhost" or name.endswith(".localhost"):
            return self._fixed(qname, rdtype, "127.0.0.1", "::1")
        try:
            self.decisions.may_resolve(name)
        except Denied as denied:
            return _Outcome(dns.rcode.NXDOMAIN, Decision.DENIED, denied.strerror or str(denied), rule=denied.rule)
        failure = await self._look_up(name)
        if failure is not None:
            return failure
        if rdtype == dns.rdatatype.AAAA:
            return _Outcome(dns.rcode.NOERROR, Decision.ALLOWED, "no data: the name pool is IPv4; the A answer serves")
        if rdtype != dns.rdatatype.A:
            return _Outcome(dns.rcode.NOERROR, Decision.ALLOWED, "no data: only A queries get an answer; nothing is forwarded")
        try:
            address = self.pool.address_for(name)
        except PoolExhausted as error:
            return _Outcome(dns.rcode.SERVFAIL, Decision.FAILED, str(error))
        return self._records(qname, dns.rdatatype.A, address)

    async def _look_up(self, name: str) -> _Outcome | None:
        """None if the name has an address; else the outcome that says why not."""
        try:
            with trio.fail_after(self.lookup_timeout):
                addresses = await self.decisions.lookup(name)
        except trio.TooSlowError:
            return _Outcome(dns.rcode.SERVFAIL, Decision.FAILED, f"no answer within {self.lookup_timeout:g} s")
        except Denied as denied:
            return _Outcome(dns.rcode.NXDOMAIN, Decision.DENIED, denied.strerror or str(denied), rule=denied.rule)
        except ResolveError as error:
            if error.eai == socket.EAI_NONAME:
                return _Outcome(dns.rcode.NXDOMAIN, Decision.FAILED, error.message)
            if error.eai == EAI_NODATA:
                return _Outcome(dns.rcode.NOERROR, Decision.FAILED, error.message)
            return _Outcome(dns.rcode.SERVFAIL, Decision.FAILED, error.message)
        if not addresses:
            return _Outcome(dns.rcode.NOERROR, Decision.FAILED, "the name has no address")
        return None

    def _fixed(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, ipv4: str, ipv6: str | None) -> _Outcome:
        """A name whose addresses the sandbox fixes: host.arca.internal, localhost."""
        if rdtype == dns.rdatatype.A:
            return self._records(qname, rdtype, ipv4)
        if rdtype == dns.rdatatype.AAAA and ipv6 is not None:
            return self._records(qname, rdtype, ipv6)
        return _Outcome(dns.rcode.NOERROR, Decision.ALLOWED, "no data of that type")

    def _reverse(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Outcome:
        """A name under in-addr.arpa or ip6.arpa: the pool's and loopback's names, nothing else."""
        try:
            address = str(ipaddress.ip_address(dns.reversename.to_address(qname)))
        except (dns.exception.DNSException, ValueError):
            return _Outcome(dns.rcode.NXDOMAIN, Decision.FAILED, "not the reverse name of an address")
        name = self.pool.name_for(address) or _LOOPBACK_NAMES.get(address)
        if name is None:
            return _Outcome(dns.rcode.NXDOMAIN, Decision.FAILED, f"no name known for {address}; nothing is forwarded")
        if rdtype != dns.rdatatype.PTR:
            return _Outcome(dns.rcode.NOERROR, Decision.ALLOWED, "no data of that type")
        return self._records(qname, rdtype, name + ".")

    def _records(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, value: str) -> _Outcome:
        rrset = dns.rrset.from_text(qname, self.pool.ttl, dns.rdataclass.IN, rdtype, value)
        return _Outcome(dns.rcode.NOERROR, Decision.ALLOWED, records=[rrset], answer=value.rstrip("."))

    def _audit(self, record: QueryRecord) -> None:
        try:
            self.decisions.audit(record)
        except Exception:
            log.exception("sandbox DNS: the audit callback failed")


def policy_decisions(policy: Policy, resolver: Resolver, audit: Callable[[QueryRecord], None]) -> Decisions:
    """The decisions of a policy and a resolver: resolve rules, then the name's addresses less those refused.

    A name whose every address the policy refuses (a DNS answer in a private
    range, say: ``Policy.addresses_for``) gets no pool address; the intercept
    applies the same filter again, with the port, when a connection comes.
    """

    async def lookup(name: str) -> list[str]:
        found = await resolver.resolve(name, type=socket.SOCK_STREAM)
        return policy.addresses_for(name, None, [endpoint.host for _, _, endpoint in found], resolver.names_for)

    return Decisions(policy.check_resolve, lookup, audit)


__all__ = ["Decision", "Decisions", "QueryRecord", "SandboxDNS", "policy_decisions"]
