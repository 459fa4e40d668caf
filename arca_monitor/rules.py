"""The rule syntax: what an ``--allow-*`` rule, or a policy file's entry, says, parsed; deciding is ``policy``'s.

A rule is ``ADDR[/PREFIX][:PORTS]``. ADDR is an IPv4 address, an IPv6 address
in brackets (``[::1]``), a host name, or a wildcard domain (``*.example.test``,
which matches names below example.test, not example.test itself). PORTS is a
port, a range ``A-B``, or ``*``. Privileged ports (below 1024) are allowed only
by a rule whose range names them: ``*``, or no PORTS at all, means 1024-65535.

Kinds: ``listen``, ``connect`` and ``udp`` rules (for listen and udp, ADDR is
the address bound: ``[::]`` allows the IPv6 wildcard itself), ``resolve`` name
patterns, ``peer`` CIDRs that accepted connections must come from, and
``unix`` directories. A TOML policy file lists rule texts by kind
(:func:`load_toml`).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import tomllib
from dataclasses import dataclass


class Kind(enum.Enum):
    LISTEN = "listen"
    CONNECT = "connect"
    UDP = "udp"
    RESOLVE = "resolve"
    PEER = "peer"
    UNIX = "unix"


PRIVILEGED = 1024


@dataclass(frozen=True)
class Ports:
    low: int
    high: int

    @classmethod
    def parse(cls, text: str | None) -> Ports:
        if text is None or text == "*":  # "*", or no port at all: every port but the privileged ones
            return cls(PRIVILEGED, 65535)
        low, sep, high = text.partition("-")
        try:
            ports = cls(int(low), int(high) if sep else int(low))
        except ValueError:
            raise ValueError(f"bad port range {text!r}") from None
        if not 0 < ports.low <= ports.high <= 65535:
            raise ValueError(f"bad port range {text!r}")
        return ports

    def allows(self, port: int) -> bool:
        return self.low <= port <= self.high


@dataclass(frozen=True)
class Rule:
    kind: Kind
    text: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    name: str | None = None  # exact name, or "*.domain"
    ports: Ports = Ports(PRIVILEGED, 65535)

    def matches_name(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        if self.name is None:
            return False
        if self.name.startswith("*."):
            return name.endswith(self.name[1:]) and name != self.name[2:]
        return name == self.name


def parse_rule(kind: Kind, text: str) -> Rule:
    """One rule of ``kind`` from its text; ValueError with the reason if it is malformed."""
    text = text.strip()
    if kind is Kind.RESOLVE:
        return Rule(kind, text, name=_name(text))
    if kind is Kind.UNIX:
        if not text.startswith("/"):
            raise ValueError(f"an --allow-unix rule is an absolute directory, not {text!r}")
        return Rule(kind, os.path.normpath(text))
    if kind is Kind.PEER:
        return Rule(kind, text, network=ipaddress.ip_network(text.strip("[]"), strict=False))
    ports_text = None
    if text.startswith("["):
        end = text.index("]")
        address, rest = text[1:end], text[end + 1 :]
        prefix, _, ports_text = rest.partition(":") if ":" in rest else (rest, "", None)
        network = ipaddress.ip_network(address + prefix, strict=False)
        return Rule(kind, text, network=network, ports=Ports.parse(ports_text))
    address, sep, ports_text = text.rpartition(":")
    if not sep:
        address, ports_text = text, None
    try:
        network = ipaddress.ip_network(address, strict=False)
    except ValueError:
        if "/" in address:
            raise ValueError(f"bad address in rule {text!r}") from None
        return Rule(kind, text, name=_name(address), ports=Ports.parse(ports_text))
    return Rule(kind, text, network=network, ports=Ports.parse(ports_text))


def _name(text: str) -> str:
    name = text.lower().rstrip(".")
    body = name.removeprefix("*.")
    if not body or any(not label or not all(c.isalnum() or c in "-_" for c in label) for label in body.split(".")):
        raise ValueError(f"bad name pattern {text!r}")
    return name


def load_toml(path: str, extra: dict[Kind, list[str]]) -> dict[Kind, list[str]]:
    """The rule texts of a TOML file (``connect = ["..."]`` and so on), with ``extra`` added."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    merged = {kind: list(extra.get(kind, [])) for kind in Kind}
    for key, values in data.items():
        try:
            kind = Kind(key.removeprefix("allow-").removeprefix("allow_"))
        except ValueError:
            raise ValueError(f"{path}: unknown rule kind {key!r}") from None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{path}: {key} must be a list of strings")
        merged[kind] += values
    return merged
