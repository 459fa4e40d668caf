"""What a guest may reach: the default when no rule is given, and the decisions (the rules' syntax is ``rules``'s).

Everything no rule allows is denied. With no rule at all a default
applies, one of two (:class:`Default`): ``loopback`` (a bare monitor's and
``open_session()``'s): connect to loopback; listen and bind UDP on loopback
and the wildcards, ports 1024 and up; resolve from the hosts file only.
``none`` (arca-run's): nothing at all outside the sandbox, names from the
hosts file only.

Every :class:`Denied` carries ``rule``: the one rule (as a command-line
option) that would have allowed exactly what was refused, for the error's
reader and the audit log's ``rule`` field.

A connect rule that names a host allows the addresses the monitor itself
resolved for that name, while its answer is fresh (``Resolver.names_for`` with
``fresh``): an IP literal does not get past a name rule, and a name a connect
rule allows may also be resolved.

DNS rebinding: an answer that came from DNS (not from the operator's hosts
file) never lets a name rule reach a special address (loopback, private,
link-local, ...: ``rebinding.rebinding_reason`` has the list). A CIDR rule
that covers the address still allows it: the operator named it. The denial,
an :class:`AnswerRefused`, names the address, the name and the reason, and
says which rule would allow it. :meth:`Policy.check_connect` applies this to
a guest's Connect, and to a connect made for a known name (``name=``, from a
front end that knows which name was meant: then only that name's rules
count); :meth:`Policy.addresses_for` to the addresses a name resolved to (the
sandbox's intercept path, where a pool address says which name was meant).

Every check takes the ``Endpoint`` as it was parsed where it entered: the
address compared against a rule is built from its packed bytes, not its text.
"""

from __future__ import annotations

import enum
import errno
import functools
import ipaddress
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from arca_control.protocol.wire import Endpoint

from .rebinding import rebinding_reason
from .resolver import Source
from .rules import Kind, load_toml, parse_rule

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from .resolver import Names
    from .rules import Rule

#: An IP address as the rules' networks hold them.
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Denied(PermissionError):
    """A request no rule allows: EACCES, with the kind of rule that was missing and the rule that would allow it.

    ``rule`` is that rule as an option (``--allow-connect 127.0.0.1:8000``);
    by default the missing kind's option with ``what``.
    """

    def __init__(self, kind: Kind, what: str, message: str | None = None, *, rule: str | None = None) -> None:
        super().__init__(errno.EACCES, message or f"denied by policy: no --allow-{kind.value} rule for {what}")
        self.kind = kind
        self.rule = rule or f"--allow-{kind.value} {what}"


class AnswerRefused(Denied):
    """A name rule matched, but only DNS gave the address and it is one DNS must not lead to (rebinding).

    The message says the address, why, the name and the rule that would allow
    it; the name is cut short when the whole would not fit the 255-byte text
    field an error travels in, so the rule is never lost.
    """

    def __init__(self, address: str, name: str, port: int | None, why: str) -> None:
        shown = f"{_show(address)}:{port}" if port is not None else _show(address)

        def message(name_shown: str) -> str:
            return (f"denied by policy: {address} is {why} that DNS gave for {name_shown}; a name rule does not"
                    f" reach it (allow it with --allow-connect {shown})")

        text = message(name)
        overflow = len(text.encode()) - MAX_MESSAGE
        if overflow > 0:
            text = message(name[: max(1, len(name) - overflow - 3)] + "...")
        super().__init__(Kind.CONNECT, shown, text, rule=f"--allow-connect {shown}")
        self.address = address
        self.name = name
        self.why = why


#: The longest error text the wire carries (a 255-byte field).
MAX_MESSAGE = 255


DEFAULT_RULES = {
    Kind.CONNECT: ["127.0.0.0/8:1-65535", "[::1]:1-65535"],
    Kind.LISTEN: ["127.0.0.0/8:*", "[::1]:*", "0.0.0.0:*", "[::]:*"],
    Kind.UDP: ["127.0.0.0/8:*", "[::1]:*", "0.0.0.0:*", "[::]:*"],
}


class Default(enum.Enum):
    """Which default applies when no rule is given at all (``--default-policy``)."""

    #: A bare monitor's and ``open_session()``'s: loopback, listening and UDP on loopback and the wildcards.
    LOOPBACK = "loopback"
    #: arca-run's: nothing outside the sandbox (names from the hosts file only).
    NONE = "none"


#: The rules each default stands for.
DEFAULTS: dict[Default, dict[Kind, list[str]]] = {Default.LOOPBACK: DEFAULT_RULES, Default.NONE: {}}


@dataclass
class Policy:
    rules: dict[Kind, list[Rule]] = field(default_factory=dict)
    #: True when no rule was given at all, and the default applies.
    default: bool = False

    @classmethod
    def build(cls, given: Mapping[Kind, Iterable[str]], fallback: Default = Default.LOOPBACK) -> Policy:
        """The policy for these rule texts; the ``fallback`` default when there are none at all."""
        listed = {kind: list(texts) for kind, texts in given.items()}
        default = not any(listed.values())
        source = DEFAULTS[fallback] if default else listed
        rules = {kind: [parse_rule(kind, text) for text in texts] for kind, texts in source.items()}
        return cls(rules, default)

    @classmethod
    def from_toml(cls, path: str, extra: dict[Kind, list[str]]) -> dict[Kind, list[str]]:
        """The rule texts of a TOML file (``connect = ["..."]`` and so on), with ``extra`` added."""
        return load_toml(path, extra)

    @property
    def dns_allowed(self) -> bool:
        """Whether any name may be looked up in DNS (a resolve rule, or a connect rule naming a host)."""
        return bool(self.rules.get(Kind.RESOLVE)) or any(r.name for r in self.rules.get(Kind.CONNECT, []))

    def check_bind(self, kind: Kind, endpoint: Endpoint) -> None:
        """A listen or UDP bind on an IP ``endpoint`` (its port the one really bound)."""
        address = _address(endpoint)
        for rule in self.rules.get(kind, []):
            if rule.network is not None and address in rule.network and rule.ports.allows(endpoint.port):
                return
        raise Denied(kind, f"{_show(endpoint.host)}:{endpoint.port}")

    def check_connect(
        self, endpoint: Endpoint, names_for: Callable[[Endpoint], Names], *, name: str | None = None
    ) -> None:
        """A connect to the IP ``endpoint``: by a CIDR rule, or a name rule for a name the monitor resolved to it.

        ``names_for(endpoint)`` gives the names the monitor answered with this
        address (fresh answers only) and their sources. A control-protocol
        Connect names only an address, so any name the address has counts: one
        the hosts file gives lets a name rule reach it even when DNS gave it
        for another name too. ``name`` is the name the connect was made for,
        when the front end knows it (it resolved that name to ``endpoint``
        through the monitor): then only that name's rules count, and
        ``names_for`` says only where its answer came from. Raises
        :class:`AnswerRefused` when only a DNS answer that
        :func:`rebinding_reason` refuses would have allowed it, else Denied.
        """
        only = None if name is None else name.lower().rstrip(".")
        self._check_connect(endpoint, endpoint.port, functools.partial(names_for, endpoint), only)

    def addresses_for(
        self, name: str, port: int | None, hosts: Iterable[str], names_for: Callable[[str], Names]
    ) -> list[str]:
        """Of ``hosts`` (what ``name`` resolved to, in order), those a connection made for ``name`` may use.

        For the intercept path, where the connection's pool address says which
        name it was made for: only that name's rules count, not those of other
        names that share an address (a CDN's), and no freshness is asked
        (``hosts`` was resolved just now). ``names_for(address)`` tells
        whether the hosts file or DNS gave ``name`` that address. ``port``
        None asks whether some port would do (for a DNS answer, before any
        connection). When no address is left, raises the first
        :class:`AnswerRefused` if there was one, else Denied naming ``name``
        and the addresses tried.
        """
        name = name.lower().rstrip(".")
        usable: list[str] = []
        refused: list[AnswerRefused] = []
        hosts = list(hosts)
        for host in hosts:
            try:
                self._check_connect(Endpoint(host, 0), port, functools.partial(names_for, host), name)
            except AnswerRefused as refusal:
                refused.append(refusal)
            except Denied:
                continue
            else:
                usable.append(host)
        if usable:
            return usable
        if refused:
            raise refused[0]
        tried = ", ".join(hosts)
        wanted = name if port is None else f"{name}:{port}"
        raise Denied(Kind.CONNECT, wanted + (f" ({tried})" if tried else ""), rule=f"--allow-connect {wanted}")

    def _check_connect(self, endpoint: Endpoint, port: int | None, names: Callable[[], Names], only: str | None) -> None:
        """The one connect decision: CIDR rules, then name rules for ``only`` or every name of the address.

        ``port`` None: whether some port would do (``endpoint``'s own is not looked at).
        """
        address = _address(endpoint)
        known: Names | None = None
        refused: AnswerRefused | None = None
        for rule in self.rules.get(Kind.CONNECT, []):
            if port is not None and not rule.ports.allows(port):
                continue
            if rule.network is not None and address in rule.network:
                return
            if rule.name is None:
                continue
            if known is None:
                known = names()
            for name in (sorted(known) if only is None else [only]):
                if not rule.matches_name(name):
                    continue
                why = None if known.source(name) is Source.HOSTS_FILE else rebinding_reason(address)
                if why is None:
                    return
                refused = refused or AnswerRefused(endpoint.host, name, port, why)
        if refused is not None:
            raise refused
        raise Denied(Kind.CONNECT, _show(endpoint.host) if port is None else f"{_show(endpoint.host)}:{port}")

    def check_resolve(self, name: str) -> None:
        if self.default:
            return  # the default resolves from the hosts file only: the resolver has DNS off
        for kind in (Kind.RESOLVE, Kind.CONNECT):
            if any(rule.matches_name(name) for rule in self.rules.get(kind, [])):
                return
        raise Denied(Kind.RESOLVE, name)

    def check_peer(self, peer: Endpoint) -> bool:
        """Whether an accepted connection from the IP endpoint ``peer`` may reach the guest."""
        rules = self.rules.get(Kind.PEER)
        if not rules:
            return True
        address = _address(peer.embedded_ipv4() or peer)
        return any(rule.network is not None and address in rule.network for rule in rules)

    def check_unix(self, path: str) -> None:
        """A Listen, Connect or UdpBind on the AF_UNIX ``path``, under an ``--allow-unix`` directory.

        The unnamed endpoint ("") is no place at all: it cannot be bound or
        connected to, so it is EINVAL whatever the rules say, never a denial.

        Both the path as written and the path with its symbolic links
        resolved must be under an allowed directory (itself resolved): a
        link inside one that points at a socket outside (a container
        runtime's, say) is denied. The kernel resolves the path again when
        the monitor binds or connects, so a link swapped in between by a
        process that can write in the allowed directory is not seen here:
        allow only directories that what you run cannot write to, if that
        matters.
        """
        if not path:
            raise OSError(errno.EINVAL, "an unnamed AF_UNIX address cannot be bound or connected to")
        if not os.path.isabs(path):  # the wire allows none, but commonpath would raise ValueError
            raise OSError(errno.EINVAL, f"an AF_UNIX path must be absolute, not {path!r}")
        path = os.path.normpath(path)
        resolved = os.path.realpath(path)
        directories = [(rule.text, os.path.realpath(rule.text)) for rule in self.rules.get(Kind.UNIX, [])]
        if any(_under(path, written) for written, _ in directories) and any(
                _under(resolved, real) for _, real in directories):
            return
        raise Denied(Kind.UNIX, path)


def _under(path: str, directory: str) -> bool:
    """Whether the normalized absolute ``path`` is ``directory`` or inside it."""
    return os.path.commonpath([directory, path]) == directory


def _address(endpoint: Endpoint) -> IPAddress:
    """The address of an IP endpoint as the rules' networks compare it (no scope), from its packed bytes."""
    return ipaddress.ip_address(endpoint.packed)


def _show(host: str) -> str:
    """A host as rules write it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


__all__ = ["DEFAULTS", "DEFAULT_RULES", "AnswerRefused", "Default", "Denied", "Kind", "Policy", "parse_rule"]
