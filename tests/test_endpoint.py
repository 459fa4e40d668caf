"""Endpoint, the one address type: parsed once (from text, bytes or a sockaddr), canonical, immutable, a tuple."""

from __future__ import annotations

import copy
import ipaddress
import pickle
import re
import socket
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arca_control.protocol import endpoint as endpoint_module
from arca_control.protocol.addresses import ip_endpoint
from arca_control.protocol.codec import decode, encode
from arca_control.protocol.messages import ConnectOk, ResolveOk
from arca_control.protocol.records import MAX_PAYLOAD_IPV4, MAX_PAYLOAD_IPV6, max_payload
from arca_control.protocol.values import (
    UNIX_PATH_MAX,
    AddressFamily,
    Endpoint,
    FamilyFilter,
    ScopeError,
    SockAddr,
    SockType,
    parse_host,
)
from arca_control.protocol.wire import ENDPOINT

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

IPV4, IPV6, UNIX = AddressFamily.IPV4, AddressFamily.IPV6, AddressFamily.UNIX
LOOPBACK6 = b"\0" * 15 + b"\x01"


# --- from text ----------------------------------------------------------------------------------


def test_text_is_parsed_once_into_family_packed_scope_and_port() -> None:
    v4 = Endpoint("192.0.2.1", 8080)
    assert (v4.family, v4.packed, v4.scope_id, v4.port) == (IPV4, bytes([192, 0, 2, 1]), 0, 8080)
    v6 = Endpoint("fe80::1%2", 22)
    assert (v6.family, v6.packed, v6.scope_id, v6.port) == (IPV6, b"\xfe\x80" + b"\0" * 13 + b"\x01", 2, 22)
    path = Endpoint("/run/arca/guest.sock", 0)
    assert (path.family, path.packed, path.scope_id, path.port) == (UNIX, b"/run/arca/guest.sock", 0, 0)
    unnamed = Endpoint("", 0)
    assert (unnamed.family, unnamed.packed, unnamed.is_unix) == (UNIX, b"", True)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("::FFFF:127.0.0.1", "::ffff:127.0.0.1"),
        ("::ffff:7f00:1", "::ffff:127.0.0.1"),  # the mapped form is written as inet_ntop writes it
        ("fe80::1%02", "fe80::1%2"),
        ("fe80::1%0", "fe80::1"),  # a zero scope is no scope
        ("fe80::1%4294967295", "fe80::1%4294967295"),
    ],
)
def test_host_is_the_canonical_text(text: str, canonical: str) -> None:
    endpoint = Endpoint(text, 1)
    assert endpoint.host == canonical
    assert endpoint == Endpoint(canonical, 1)


@pytest.mark.parametrize(
    ("host", "port", "error", "message"),
    [
        ("localhost", 80, ValueError, "'localhost' is not an IP address literal"),
        ("127.1", 80, ValueError, "is not an IP address literal"),
        ("01.2.3.4", 80, ValueError, "is not an IP address literal"),
        ("1.2.3.4 ", 80, ValueError, "is not an IP address literal"),
        ("1.2.3.4%1", 80, ValueError, "is not an IP address literal"),
        ("a/b", 0, ValueError, "is not an IP address literal"),
        ("fe80::1%lo", 80, ScopeError, "scope id 'lo' of 'fe80::1%lo' is not a number"),
        ("fe80::1%4294967296", 80, ScopeError, "does not fit in 32 bits"),
        ("fe80::1%", 80, ScopeError, "an empty or doubled scope"),
        ("fe80::1%1%2", 80, ScopeError, "an empty or doubled scope"),
        ("127.0.0.1", 70000, ValueError, "port must be 0-65535, not 70000"),
        ("127.0.0.1", -1, ValueError, "port must be 0-65535"),
        ("/tmp/x", 5, ValueError, "an AF_UNIX endpoint has port 0, not 5"),
        ("/tmp/\0x", 0, ValueError, "not a usable AF_UNIX path"),
        ("/" + "p" * UNIX_PATH_MAX, 0, ValueError, "not a usable AF_UNIX path"),
        ("/\ud800", 0, ValueError, "not a usable AF_UNIX path"),
        (0x7F000001, 80, TypeError, "an endpoint's host is text"),
        ("127.0.0.1", "80", TypeError, "a port is an int"),
    ],
)
def test_what_is_no_endpoint_is_refused_with_a_clear_message(
    host: object, port: object, error: type[Exception], message: str
) -> None:
    untyped: Callable[..., Endpoint] = Endpoint  # as an untyped caller may pass anything
    with pytest.raises(error, match=re.escape(message)):
        untyped(host, port)


def test_scope_errors_are_value_errors_with_a_short_reason() -> None:
    with pytest.raises(ValueError, match="not a number") as caught:
        parse_host("fe80::1%eth0")
    assert isinstance(caught.value, ScopeError)
    assert caught.value.reason == "scope id 'eth0' is not a number"


def test_the_guest_turns_an_interface_name_into_its_index() -> None:
    index = socket.if_nametoindex("lo")
    assert parse_host("fe80::1%lo", interface_names=True) == (IPV6, b"\xfe\x80" + b"\0" * 13 + b"\x01", index)
    assert ip_endpoint("fe80::1%lo", 80) == Endpoint(f"fe80::1%{index}", 80)
    with pytest.raises(ScopeError, match="no interface 'no-such-if'"):
        ip_endpoint("fe80::1%no-such-if", 80)
    with pytest.raises(ValueError, match="'/tmp/x' is not an IP address literal"):
        ip_endpoint("/tmp/x", 0)  # a path is an endpoint, but not an IP one


SEEDS = ["1.2.3.4", "::1", "::ffff:1.2.3.4", "fe80::1%2", "1:2:3:4:5:6:7:8", "::", "1::", "255.255.255.255"]


@st.composite
def edited_literal(draw: st.DrawFn) -> str:
    """A literal with a few characters replaced, inserted or removed."""
    text = list(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        char = draw(st.sampled_from("0123456789abcdefABCDEF:.% x\0٣"))
        action = draw(st.sampled_from(["insert", "replace", "delete"]))
        if action == "insert" or not text:
            text.insert(at, char)
        elif action == "replace":
            text[min(at, len(text) - 1)] = char
        else:
            del text[min(at, len(text) - 1)]
    return "".join(text)


#: Text near the edges of the literal grammar, for the parser to agree with ipaddress on.
near_literals = st.one_of(edited_literal(), st.text(alphabet="0123456789abcdefABCDEF:.%x٣", max_size=20))


def literal(text: str) -> tuple[AddressFamily, bytes, int] | None:
    """``parse_host``'s verdict on ``text`` as an IP literal: None if it refuses it or takes it as a path."""
    try:
        parsed = parse_host(text)
    except ValueError:
        return None
    return None if parsed[0] == UNIX else parsed


def reference(text: str) -> tuple[AddressFamily, bytes, int] | None:
    """``ipaddress``'s verdict, with the scope rule of the wire: a scope is a number of 32 bits."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return IPV4, address.packed, 0
    scope = address.scope_id or "0"
    if not (scope.isascii() and scope.isdigit() and int(scope) <= 0xFFFFFFFF):
        return None  # ipaddress takes any scope text; a name is the guest's to turn into a number
    return IPV6, address.packed, int(scope)


@given(near_literals)
def test_the_parser_is_as_strict_as_ipaddress(text: str) -> None:
    assert literal(text) == reference(text)


# --- from bytes and from sockaddrs ----------------------------------------------------------------


def test_from_packed_builds_the_same_value_as_the_text() -> None:
    assert Endpoint.from_packed(IPV4, b"\x7f\0\0\x01", 80) == Endpoint("127.0.0.1", 80)
    assert Endpoint.from_packed(IPV6, LOOPBACK6, 443) == Endpoint("::1", 443)
    assert Endpoint.from_packed(IPV6, LOOPBACK6, 1, scope_id=7) == Endpoint("::1%7", 1)
    assert Endpoint.from_packed(UNIX, b"/tmp/s") == Endpoint("/tmp/s", 0)
    assert Endpoint.from_packed(UNIX, "/é".encode()).host == "/é"


@pytest.mark.parametrize(
    ("family", "packed", "port", "scope_id"),
    [
        (IPV4, b"\x7f\0\0", 80, 0),
        (IPV4, b"\x7f\0\0\x01", 80, 1),  # IPv4 has no scope
        (IPV6, b"\0" * 4, 80, 0),
        (IPV6, LOOPBACK6, 80, 1 << 32),
        (IPV4, b"\x7f\0\0\x01", 1 << 16, 0),
        (UNIX, b"relative", 0, 0),
        (UNIX, b"/\xff", 0, 0),
        (UNIX, b"/nul\0", 0, 0),
        (UNIX, b"/p", 1, 0),
    ],
)
def test_from_packed_refuses_what_is_no_address(family: AddressFamily, packed: bytes, port: int, scope_id: int) -> None:
    with pytest.raises(ValueError, match=r"not a packed address|port|AF_UNIX"):
        Endpoint.from_packed(family, packed, port, scope_id)


def test_from_sockaddr_and_sockaddr_round_trip() -> None:
    index = socket.if_nametoindex("lo")
    cases: list[tuple[SockAddr, Endpoint]] = [
        (("127.0.0.1", 80), Endpoint("127.0.0.1", 80)),
        (("::1", 5, 0, 0), Endpoint("::1", 5)),
        (("fe80::1", 80, 0, index), Endpoint(f"fe80::1%{index}", 80)),
        ("/tmp/s", Endpoint("/tmp/s", 0)),
        ("", Endpoint("", 0)),
    ]
    for sockaddr, endpoint in cases:
        assert Endpoint.from_sockaddr(sockaddr) == endpoint
        assert endpoint.sockaddr() == sockaddr
        assert Endpoint.from_sockaddr(endpoint.sockaddr()) == endpoint
    assert Endpoint.from_sockaddr(b"/tmp/s") == Endpoint("/tmp/s", 0)
    assert Endpoint.from_sockaddr((f"fe80::1%{index}", 80, 0, index)) == Endpoint(f"fe80::1%{index}", 80)
    assert Endpoint.from_sockaddr(("::1", 5)) == Endpoint("::1", 5)  # IPv6 text in a pair
    with pytest.raises(ValueError, match="an AF_UNIX address the wire has no form for"):
        Endpoint.from_sockaddr(b"\0abstract")  # the wire has no form for it
    with pytest.raises(ValueError, match="not an IPv6 socket address"):
        Endpoint.from_sockaddr(("127.0.0.1", 80, 0, 0))
    with pytest.raises(ValueError, match="an AF_UNIX endpoint has no IP socket address"):
        Endpoint("/tmp/s", 0).ip_sockaddr()


def test_an_endpoint_is_what_the_kernel_takes_and_gives(tmp_path: Path) -> None:
    for endpoint in (Endpoint("127.0.0.1", 0), Endpoint("::1", 0), Endpoint(str(tmp_path / "s"), 0)):
        with socket.socket(endpoint.socket_family, socket.SOCK_STREAM) as sock:
            sock.bind(endpoint.sockaddr())
            bound = Endpoint.from_sockaddr(sock.getsockname())
            assert (bound.family, bound.packed) == (endpoint.family, endpoint.packed)
    with socket.socket() as sock:
        sock.bind(Endpoint("127.0.0.1", 0))  # an IPv4 Endpoint is the (host, port) tuple itself
        assert Endpoint.from_sockaddr(sock.getsockname()).host == "127.0.0.1"


def test_socket_numbers_come_from_the_values() -> None:
    assert [e.socket_family for e in (Endpoint("1.2.3.4", 1), Endpoint("::", 1), Endpoint("/", 0))] == [
        socket.AF_INET, socket.AF_INET6, socket.AF_UNIX
    ]
    assert AddressFamily.IPV6.socket_family == socket.AF_INET6
    assert [FamilyFilter.of_socket_family(f) for f in (0, socket.AF_INET, socket.AF_INET6)] == list(FamilyFilter)
    assert [f.socket_family for f in FamilyFilter] == [0, socket.AF_INET, socket.AF_INET6]
    assert [SockType.of_socket_type(t) for t in (0, socket.SOCK_STREAM, socket.SOCK_DGRAM)] == list(SockType)
    assert [t.socket_type for t in SockType] == [0, socket.SOCK_STREAM, socket.SOCK_DGRAM]
    with pytest.raises(ValueError, match="address family 1 not supported"):
        FamilyFilter.of_socket_family(socket.AF_UNIX)
    with pytest.raises(ValueError, match="socket type 3 not supported"):
        SockType.of_socket_type(socket.SOCK_RAW)


# --- the value -----------------------------------------------------------------------------------


def test_equality_and_hash_are_the_tuples() -> None:
    endpoint = Endpoint("127.0.0.1", 80)
    assert endpoint == ("127.0.0.1", 80)
    pair = ("127.0.0.1", 80)
    assert pair == endpoint
    assert hash(endpoint) == hash(pair)
    table: dict[tuple[str, int], int] = {endpoint: 1}
    assert table[pair] == 1
    assert tuple(endpoint) == ("127.0.0.1", 80)
    host, port = endpoint
    assert (host, port, endpoint[0], endpoint[1], len(endpoint)) == ("127.0.0.1", 80, "127.0.0.1", 80, 2)
    # The same address in another family is another endpoint, as for the kernel.
    assert Endpoint("::ffff:127.0.0.1", 80) != endpoint
    assert Endpoint("fe80::1%1", 80) != Endpoint("fe80::1%2", 80)
    assert Endpoint("127.0.0.1", 80) != Endpoint("127.0.0.1", 81)
    assert repr(endpoint) == "Endpoint(host='127.0.0.1', port=80)"


def test_it_cannot_be_changed_and_survives_copies() -> None:
    endpoint = Endpoint("fe80::1%3", 80)
    with pytest.raises(AttributeError, match="cannot be changed"):
        setattr(endpoint, "port", 81)  # noqa: B010 (a read-only property to the type checker)
    with pytest.raises(AttributeError, match="cannot be changed"):
        endpoint.family = IPV4
    with pytest.raises(AttributeError, match="cannot be changed"):
        del endpoint.scope_id
    for twin in (copy.copy(endpoint), copy.deepcopy(endpoint), pickle.loads(pickle.dumps(endpoint))):
        assert twin == endpoint
        assert (twin.family, twin.packed, twin.scope_id) == (IPV6, endpoint.packed, 3)


def test_mapped_forms_and_ports() -> None:
    v4 = Endpoint("127.0.0.1", 53)
    mapped = v4.ipv4_mapped()
    assert mapped == Endpoint("::ffff:127.0.0.1", 53)
    assert mapped.embedded_ipv4() == v4
    assert v4.embedded_ipv4() is None
    assert Endpoint("::1", 53).embedded_ipv4() is None
    assert Endpoint("::ffff:127.0.0.1%2", 53).embedded_ipv4() is None  # a scope makes it no plain IPv4 peer
    with pytest.raises(ValueError, match="only an IPv4 endpoint"):
        mapped.ipv4_mapped()
    assert v4.with_port(80) == Endpoint("127.0.0.1", 80)
    assert Endpoint("fe80::1%2", 0).with_port(5).scope_id == 2
    with pytest.raises(ValueError, match="port must be"):
        v4.with_port(1 << 16)
    assert max_payload(mapped) == max_payload(v4) == MAX_PAYLOAD_IPV4
    assert max_payload(Endpoint("::1", 53)) == MAX_PAYLOAD_IPV6


# --- the codec ------------------------------------------------------------------------------------


def test_the_codec_reads_and_writes_the_packed_form_without_text(monkeypatch: pytest.MonkeyPatch) -> None:
    local, peer = Endpoint("127.0.0.1", 40000), Endpoint("fe80::2%2", 443)
    reply = ConnectOk(request_id=4, connection_id=2, local=local, peer=peer)
    listed = ResolveOk(request_id=5, addresses=((SockType.STREAM, peer), (SockType.DGRAM, local)))
    frames = [encode(reply), encode(listed)]

    def no_text(*args: object, **kwargs: object) -> None:
        raise AssertionError("an endpoint's text was parsed")

    monkeypatch.setattr(endpoint_module, "parse_host", no_text)
    assert [encode(reply), encode(listed)] == frames
    decoded = decode(frames[0])
    assert decoded == reply
    assert isinstance(decoded, ConnectOk)
    assert (decoded.peer.family, decoded.peer.packed, decoded.peer.scope_id) == (IPV6, peer.packed, 2)
    assert decode(frames[1]) == listed
    assert ENDPOINT.write(local) == bytes([IPV4]) + local.packed + (40000).to_bytes(2, "little")
    assert ENDPOINT.write(peer) == bytes([IPV6]) + peer.packed + (2).to_bytes(4, "little") + (443).to_bytes(2, "little")
    assert ENDPOINT.read(ENDPOINT.write(peer), 0) == (peer, 23)
