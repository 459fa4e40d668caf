"""The sandbox's name pool: each allowed name gets a loopback address of its own, mapped back to the name.

The sandbox's DNS server (``sandbox_dns``) answers an allowed name with an
address from this pool instead of the name's real addresses; the sandbox's
nftables rules send connections to the pool to the monitor, whose intercept
front end asks :meth:`NamePool.name_for` which name the connection was made
for, then resolves and connects by that name under that name's rules. So a
connection is tied to the name it was made for: two names that share a CDN
address get two pool addresses, and one's permission never carries to the other.

The scheme:

* The pool is a network inside 127.0.0.0/8, by default ``127.100.0.0/16``,
  away from the addresses programs use for themselves (127.0.0.1, the
  resolver stub 127.0.0.53, Debian's host name line 127.0.1.1): every
  address of the pool is taken over by the monitor inside the sandbox.
  127.0.0.1 is never in it, nor the network's first and last address.
* ``host.arca.internal`` (the host's loopback) has the first address, fixed;
  names get the next ones, upward, in the order they are first asked for.
* A name keeps its address while it is asked for again and again: each
  answer refreshes it. An entry lives at least ``ttl`` seconds after its last
  use (a DNS answer, or the end of a connection through it; the DNS answers
  carry the same TTL), and as long as a connection holds it (:meth:`hold`).
* Exhaustion: when every address has been given out, the least recently used
  entry that has expired and is held by no connection is given to the new
  name (its old name simply gets a fresh address when asked again). If there
  is none, :meth:`address_for` raises :class:`PoolExhausted`, which the DNS
  server answers SERVFAIL: no live mapping is ever changed under a program.
* The pool is IPv4 only: one address per name is all the binding needs, and
  programs asking for AAAA as well fall back to the A answer.

Time comes from an injected clock (``time.monotonic`` by default), so tests
can move it on without sleeping.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: The name of the host's loopback inside the sandbox.
HOST_NAME = "host.arca.internal"
#: The pool unless told otherwise: 65,533 names.
DEFAULT_NETWORK = "127.100.0.0/16"
#: Seconds an entry lives after its last use, and the TTL of the DNS answers that give it out.
DEFAULT_TTL = 60
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_SANDBOX_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


class PoolExhausted(Exception):
    """Every pool address is in use or within its TTL: the name gets no address now."""


@dataclass
class _Entry:
    address: ipaddress.IPv4Address
    #: When the entry was last used: answered, or released by a connection.
    used: float
    #: Connections that hold it now.
    holders: int = 0


class NamePool:
    """Names ↔ pool addresses; see the module docstring for the scheme."""

    def __init__(
        self, network: str = DEFAULT_NETWORK, *, ttl: int = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        pool = ipaddress.IPv4Network(network)
        if not pool.subnet_of(_LOOPBACK):
            raise ValueError(f"the name pool must lie inside 127.0.0.0/8, not {network}")
        if ttl < 1:
            raise ValueError("the pool's TTL is at least 1 second")
        # The network's first and last address are left out (as on any network), and 127.0.0.1,
        # which stays the sandbox's own loopback.
        low, high = int(pool.network_address) + 1, int(pool.broadcast_address) - 1
        loopback = int(_SANDBOX_LOOPBACK)
        host = low + 1 if low == loopback else low
        first_name = host + 1
        capacity = high - first_name + 1 - (first_name <= loopback <= high)
        if capacity < 1:
            raise ValueError(f"the name pool {network} has no room for host.arca.internal and a name")
        self.network = pool
        self.ttl = ttl
        #: The fixed address of host.arca.internal, the host's loopback.
        self.host_address = str(ipaddress.IPv4Address(host))
        #: How many names the pool holds at once.
        self.capacity = capacity
        self._clock = clock
        self._next = first_name
        self._high = high
        #: By name, least recently used first.
        self._by_name: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._by_address: dict[ipaddress.IPv4Address, str] = {}

    @property
    def count(self) -> int:
        """How many names have an address now."""
        return len(self._by_name)

    def address_for(self, name: str) -> str:
        """The pool address of ``name``, given now if it has none; refreshes its entry. Raises PoolExhausted."""
        name = _normal(name)
        if name == HOST_NAME:
            return self.host_address
        now = self._clock()
        entry = self._by_name.get(name)
        if entry is None:
            address = self._free_address()
            if address is None:
                address = self._reclaim(now)
            entry = _Entry(address, now)
            self._by_name[name] = entry
            self._by_address[address] = name
        entry.used = max(entry.used, now)
        self._by_name.move_to_end(name)
        return str(entry.address)

    def name_for(self, address: str) -> str | None:
        """The name a pool address stands for (``host.arca.internal`` for the host's), or None."""
        try:
            parsed = ipaddress.IPv4Address(address)
        except ValueError:
            return None
        if str(parsed) == self.host_address:
            return HOST_NAME
        return self._by_address.get(parsed)

    def in_pool(self, address: str) -> bool:
        """Whether ``address`` lies in the pool's network (given out or not)."""
        try:
            return ipaddress.IPv4Address(address) in self.network
        except ValueError:
            return False

    @contextlib.contextmanager
    def hold(self, address: str) -> Iterator[str]:
        """For one connection to ``address``: yields its name; the entry is not reused until the block ends.

        Raises LookupError if the address stands for no name (never given
        out, or given to another name since: the program kept it too long).
        """
        name = self.name_for(address)
        if name is None:
            raise LookupError(f"{address} stands for no name in the pool")
        entry = self._by_name.get(name)
        if entry is None:  # host.arca.internal: fixed, nothing to hold
            yield name
            return
        entry.holders += 1
        try:
            yield name
        finally:
            entry.holders -= 1
            entry.used = max(entry.used, self._clock())
            self._by_name.move_to_end(name)  # still its entry: a held one is never reclaimed

    def _free_address(self) -> ipaddress.IPv4Address | None:
        """The next address never given out, upward; None when there is none."""
        while self._next <= self._high:
            address = ipaddress.IPv4Address(self._next)
            self._next += 1
            if address != _SANDBOX_LOOPBACK:
                return address
        return None

    def _reclaim(self, now: float) -> ipaddress.IPv4Address:
        """The address of the least recently used entry that expired and no connection holds."""
        for name, entry in self._by_name.items():
            if entry.holders:
                continue
            if now - entry.used < self.ttl:
                break  # every later entry was used more recently still
            del self._by_name[name]
            del self._by_address[entry.address]
            return entry.address
        raise PoolExhausted(
            f"the name pool {self.network} is exhausted: all {len(self._by_name)} addresses are held by"
            f" connections or were used within the last {self.ttl} s"
        )


def _normal(name: str) -> str:
    return name.lower().rstrip(".")


__all__ = ["DEFAULT_NETWORK", "DEFAULT_TTL", "HOST_NAME", "NamePool", "PoolExhausted"]
