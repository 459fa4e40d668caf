"""A small authoritative DNS server on 127.0.0.1 UDP, for testing the monitor's resolver.

Usage::

    async with dns_server({"www.example.test": [("A", "192.0.2.1", 300)]}) as (host, port, server):
        resolver = Resolver(hosts_file=None, nameserver=(host, port))
        ...
        assert server.count() == 1

Zone records are ``(rdtype, value, ttl)``: "A" or "AAAA" with an address, or
"CNAME" with a target name. A name in the zone without a record of the asked
type gets an empty NOERROR answer (NODATA); a name not in the zone gets
NXDOMAIN. Both come with an SOA record whose TTL and MINIMUM are
``negative_ttl``, unless ``soa`` is false. Names in ``servfail`` or ``refused``
get that rcode, names in ``malformed`` get bytes that do not parse, and names
in ``silent`` get no reply at all. Every query is counted, answered or not.
"""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import trio

#: How many CNAMEs the server follows within its zone before giving up.
MAX_CNAME_CHAIN = 8


def _key(name) -> str:
    return str(name).lower().removesuffix(".")


@dataclass
class DNSServer:
    zone: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    servfail: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    malformed: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    negative_ttl: int = 60
    soa: bool = True
    #: (name, rdtype) of every query received, in order; names lower case without the trailing dot.
    queries: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.zone = {_key(name): records for name, records in self.zone.items()}
        for attribute in ("servfail", "refused", "malformed", "silent"):
            setattr(self, attribute, {_key(name) for name in getattr(self, attribute)})

    def count(self, name: str | None = None) -> int:
        """How many queries arrived (for ``name`` only, if given)."""
        if name is None:
            return len(self.queries)
        return sum(1 for queried, _ in self.queries if queried == _key(name))

    def reply_to(self, data: bytes) -> bytes | None:
        """The reply datagram for a query datagram, or None for no reply."""
        try:
            query = dns.message.from_wire(data)
            question = query.question[0]
        except Exception:
            return None
        name = _key(question.name)
        self.queries.append((name, dns.rdatatype.to_text(question.rdtype)))
        if name in self.silent:
            return None
        if name in self.malformed:
            # The query's id, then a header promising a question and an answer that never come.
            return data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if name in self.refused:
            response.set_rcode(dns.rcode.REFUSED)
            return response.to_wire()
        self._answer(response, question.name, question.rdtype)
        # Records in zone order (dnspython would shuffle them), so tests can check the order kept.
        return response.to_wire(want_shuffle=False)

    def _answer(self, response: dns.message.Message, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> None:
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            records = self.zone.get(_key(name))
            if records is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                break
            cnames = [record for record in records if record[0] == "CNAME"]
            if cnames and rdtype != dns.rdatatype.CNAME:
                _, target, ttl = cnames[0]
                response.answer.append(dns.rrset.from_text(name, ttl, "IN", "CNAME", dns.name.from_text(target).to_text()))
                name = dns.name.from_text(target)
                continue
            matching = [record for record in records if dns.rdatatype.from_text(record[0]) == rdtype]
            if matching:
                ttl = min(record[2] for record in matching)
                values = [record[1] for record in matching]
                response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", rdtype, values))
                return
            break
        if self.soa:
            # The top-level domain plays the zone apex.
            apex = name.split(min(2, len(name)))[1]
            soa = f"ns.{apex} hostmaster.{apex} 1 3600 600 86400 {self.negative_ttl}"
            response.authority.append(dns.rrset.from_text(apex, self.negative_ttl, "IN", "SOA", soa))

    async def serve(self, sock: trio.socket.SocketType) -> None:
        """Answer queries on ``sock`` until cancelled."""
        while True:
            data, address = await sock.recvfrom(65535)
            reply = self.reply_to(data)
            if reply is not None:
                await sock.sendto(reply, address)


@asynccontextmanager
async def dns_server(zone: dict[str, list[tuple[str, str, int]]] | None = None, **options):
    """``(host, port, server)`` of a :class:`DNSServer` running on 127.0.0.1, kernel-chosen port."""
    server = DNSServer(zone or {}, **options)
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.serve, sock)
                yield host, port, server
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The server task never fails, so a group holds only the test's own
            # exception: raise that, for pytest.raises around the whole block.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
