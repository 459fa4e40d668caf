"""Asking nameservers: one record type of one name, to an :class:`Outcome` and how long it may be cached.

Queries (A or AAAA) go with dnspython's async API on trio, to the given
nameserver or to those of /etc/resolv.conf (re-read when it changes). Each
server is tried ``attempts`` times, ``timeout`` seconds an attempt.

Decisions, and why:

* An answer may be kept for the smallest TTL of its records (CNAMEs
  included), at most MAX_TTL. "No such name" (NXDOMAIN) and "no records of
  this type" (NODATA) may be kept for the SOA's negative TTL (RFC 2308: the
  smaller of the SOA record's TTL and its MINIMUM field), at most
  MAX_NEGATIVE_TTL, or DEFAULT_NEGATIVE_TTL when the reply has no SOA.
  Failures (timeouts, SERVFAIL) may not be kept: the next lookup asks again.
* Error codes: no such name, EAI_NONAME; the name exists but has no record
  of the type asked for, EAI_NODATA (what glibc returns); no reply after every
  attempt (timeouts, ICMP port unreachable), EAI_AGAIN; SERVFAIL, REFUSED, any
  other error rcode or a malformed reply, EAI_FAIL (glibc would say EAI_AGAIN
  for SERVFAIL).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import trio

from arca_control.protocol.wire import Endpoint

from .hostnames import EAI_NODATA, WatchedFile, literal_or_none, parse_resolv_conf

#: The longest a positive answer is kept, whatever its TTL says.
MAX_TTL = 3600
#: The longest a negative answer (NXDOMAIN, NODATA) is kept.
MAX_NEGATIVE_TTL = 300
#: How long a negative answer without an SOA record is kept.
DEFAULT_NEGATIVE_TTL = 30
#: The EDNS buffer size of DNS Flag Day 2020: big enough that answers rarely
#: need TCP, small enough that they are not fragmented.
EDNS_PAYLOAD = 1232
#: dnspython's trio backend: its sockets are trio sockets, its waits trio checkpoints.
_TRIO_BACKEND = dns.asyncbackend.get_backend("trio")


@dataclass(frozen=True)
class Outcome:
    """What one record type of one name came to: addresses, or an EAI code and why."""

    addresses: tuple[Endpoint, ...] = ()
    eai: int = 0
    message: str = ""


class _NoReply(Exception):
    """A nameserver did not answer (timeout, ICMP unreachable): worth asking again."""


class DnsClient:
    """Queries to ``nameserver`` (an (IP literal, port) pair), or with None to those of /etc/resolv.conf."""

    def __init__(self, nameserver: tuple[str, int] | None, *, timeout: float, attempts: int) -> None:
        server = None
        if nameserver is not None:
            host, port = nameserver
            # A nameserver named by a host name would need a resolver to find it.
            address = literal_or_none(host)
            if address is None or not 0 < port <= 0xFFFF:
                raise ValueError(f"nameserver must be (IP literal, port), not {nameserver!r}")
            server = address.with_port(port)
        self.timeout = timeout
        self.attempts = attempts
        self._nameserver = server
        # Read lazily: a client given a nameserver, or never asked, never reads it.
        self._resolv_conf: WatchedFile[list[Endpoint]] = WatchedFile("/etc/resolv.conf", parse_resolv_conf, [])
        self._backend = _TRIO_BACKEND

    def nameservers(self) -> list[Endpoint]:
        if self._nameserver is not None:
            return [self._nameserver]
        return self._resolv_conf.get()

    async def query(self, name: str, rdtype: dns.rdatatype.RdataType) -> tuple[Outcome, float | None]:
        """Ask the nameservers: the outcome, and how long it may be cached (None: not at all)."""
        nameservers = self.nameservers()
        if not nameservers:
            return Outcome(eai=socket.EAI_FAIL, message="no nameserver configured"), None
        no_reply = Outcome(eai=socket.EAI_AGAIN, message="no reply from the nameserver")
        failure: Outcome | None = None
        # A server that answered with a failure is not asked again; one that did not answer is.
        failed: set[Endpoint] = set()
        for _ in range(self.attempts):
            for server in nameservers:
                if server in failed:
                    continue
                query = dns.message.make_query(name, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
                try:
                    response = await self._ask(query, server)
                except _NoReply as error:
                    no_reply = Outcome(eai=socket.EAI_AGAIN, message=str(error))
                    continue
                except (dns.exception.DNSException, ValueError) as error:
                    # Garbage, a reply to another question, a broken TCP fallback.
                    failed.add(server)
                    failure = Outcome(eai=socket.EAI_FAIL, message=f"malformed reply ({type(error).__name__})")
                    continue
                outcome, ttl = _read_response(response, rdtype)
                if outcome.eai == socket.EAI_FAIL:
                    failed.add(server)
                    failure = outcome
                    continue
                return outcome, ttl
            if len(failed) == len(nameservers):
                break
        return failure or no_reply, None

    async def _ask(self, query: dns.message.Message, server: Endpoint) -> dns.message.Message:
        """One attempt at one server: the reply, or _NoReply after ``timeout`` seconds."""
        host, port = server
        family = server.socket_family
        with trio.move_on_after(self.timeout):
            try:
                # A connected socket (a fresh one, so a fresh source port, per
                # attempt): the kernel drops datagrams from anyone but the
                # server, and an ICMP port unreachable ends the attempt at once
                # instead of after the timeout.
                sock = await self._backend.make_socket(family, socket.SOCK_DGRAM, 0, None, (host, port))
                async with sock:
                    response, _ = await dns.asyncquery.udp_with_fallback(
                        query, host, port=port, ignore_unexpected=True, udp_sock=sock, backend=self._backend
                    )
                return response
            except OSError as error:
                why = os.strerror(error.errno) if error.errno else error
                raise _NoReply(f"no reply from the nameserver: {why}") from error
        raise _NoReply(f"no reply from the nameserver in {self.timeout:g} s")


def _read_response(response: dns.message.Message, rdtype: dns.rdatatype.RdataType) -> tuple[Outcome, float | None]:
    """The outcome of a parsed reply, and how long it may be cached."""
    if not isinstance(response, dns.message.QueryMessage):
        # A reply to a query always parses as one; anything else answered another kind of question.
        return Outcome(eai=socket.EAI_FAIL, message="malformed reply (not a query response)"), None
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return Outcome(eai=socket.EAI_FAIL, message=f"the nameserver answered {dns.rcode.to_text(rcode)}"), None
    try:
        chain = response.resolve_chaining()
    except dns.exception.DNSException as error:
        return Outcome(eai=socket.EAI_FAIL, message=f"malformed reply ({type(error).__name__})"), None
    if chain.answer is None:
        has_soa = any(rrset.rdtype == dns.rdatatype.SOA for rrset in response.authority)
        # Without an SOA dnspython falls back to its own default; ours is shorter.
        ttl = min(chain.minimum_ttl, MAX_NEGATIVE_TTL if has_soa else DEFAULT_NEGATIVE_TTL)
        if rcode == dns.rcode.NXDOMAIN:
            return Outcome(eai=socket.EAI_NONAME, message="no such name"), ttl
        return Outcome(eai=EAI_NODATA, message="no address of the family asked for"), ttl
    # Parsed once, here: the answer's addresses are kept as Endpoints (of port 0).
    addresses = (Endpoint(rdata.address, 0) for rdata in chain.answer)
    return Outcome(addresses=tuple(dict.fromkeys(addresses))), min(chain.minimum_ttl, MAX_TTL)
