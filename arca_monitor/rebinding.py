"""Where a DNS answer may not lead a name rule (DNS rebinding), and why.

Whoever runs a name's DNS can answer with any address, so a policy's name
rule is not satisfied by a DNS answer in these ranges (``policy``): loopback
(127/8, ::1), private (RFC 1918: 10/8, 172.16/12, 192.168/16), shared
(CGNAT, 100.64/10), link-local (169.254/16, fe80::/10) with the cloud
metadata address in it (169.254.169.254, and fd00:ec2::254), unique local
(ULA, fc00::/7), and the "this host" addresses (0.0.0.0/8 and ::, which
Linux connects to the host itself). An IPv6 address that carries an IPv4
one and reaches it, IPv4-mapped (::ffff:0:0/96) or NAT64 (64:ff9b::/96), is
judged by the IPv4 address it carries. Nothing here knows any rule: a CIDR
rule naming such an address allows it, and that is the policy's business.
"""

from __future__ import annotations

import ipaddress

#: Where a DNS answer may not lead a name rule, and why; the first match is the reason given,
#: so the metadata addresses come before the ranges that hold them.
_SPECIAL_RANGES: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(network), why)
    for network, why in (
        ("169.254.169.254/32", "the cloud metadata address"),
        ("fd00:ec2::254/128", "the cloud metadata address"),
        ("0.0.0.0/8", "a 'this host' address (0.0.0.0/8, which reaches the host itself)"),
        ("::/128", "the unspecified address (which reaches the host itself)"),
        ("127.0.0.0/8", "a loopback address"),
        ("::1/128", "a loopback address"),
        ("10.0.0.0/8", "a private address (RFC 1918)"),
        ("172.16.0.0/12", "a private address (RFC 1918)"),
        ("192.168.0.0/16", "a private address (RFC 1918)"),
        ("100.64.0.0/10", "a shared address (CGNAT, RFC 6598)"),
        ("169.254.0.0/16", "a link-local address"),
        ("fe80::/10", "a link-local address"),
        ("fc00::/7", "a unique local address (ULA, RFC 4193)"),
    )
)
#: IPv6 forms that carry an IPv4 address in their last 32 bits and reach it.
_IPV4_CARRIERS = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped"),
    (ipaddress.IPv6Network("64:ff9b::/96"), "NAT64"),
)


def rebinding_reason(host: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a DNS answer of ``host`` (an IP literal, or the address already parsed) may not satisfy a name rule,
    or None if it may.

    "a private address (RFC 1918)", "the IPv4-mapped form of 10.0.0.1, a
    private address (RFC 1918)" and so on. ``host`` may carry an IPv6 scope.
    """
    address = host if not isinstance(host, str) else ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address):
        for carrier, form in _IPV4_CARRIERS:
            if address in carrier:
                inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
                why = rebinding_reason(inner)
                return None if why is None else f"the {form} form of {inner}, {why}"
    for network, why in _SPECIAL_RANGES:
        if address in network:
            return why
    return None


__all__ = ["rebinding_reason"]
