"""The fixed-shape reader (one unpack for a payload of integers and IP endpoints) reads what the field readers read."""

from __future__ import annotations

import itertools

import pytest

from arca_control.protocol import errors, fastpath
from arca_control.protocol.codec import decode, decode_with_construct, encode
from arca_control.protocol.messages import (
    REGISTRY,
    AcceptOk,
    Connect,
    ConnectionReady,
    ConnectOk,
    ConnectSocketOk,
    StatsOk,
)
from arca_control.protocol.wire import HEADER_SIZE, Endpoint

ENDPOINTS = [
    Endpoint("192.0.2.1", 8080),
    Endpoint("0.0.0.0", 0),
    Endpoint("2001:db8::1", 443),
    Endpoint("fe80::1%7", 65535),
    Endpoint("/tmp/arca.sock", 0),
]


def verdict(parse, data: bytes):
    try:
        return parse(data)
    except errors.ProtocolError as exc:
        return type(exc)


def test_shapes_cover_the_endpoint_replies_and_nothing_else():
    shaped = {cls for kind, cls in REGISTRY.items() if fastpath.compile_shapes(fastpath.PLANS[int(kind)][1])}
    assert {ConnectOk, ConnectSocketOk, AcceptOk, Connect} <= shaped
    assert StatsOk not in shaped  # its count lists have no fixed size
    # Two endpoints: v4+v4, v4+v6 and v6+v4 (one length, told apart by the family bytes), v6+v6.
    shapes = fastpath.compile_shapes(fastpath.PLANS[int(ConnectOk.TYPE)][1])
    assert sorted((size, len(found)) for size, found in shapes.items()) == [(18, 1), (34, 2), (50, 1)]


@pytest.mark.parametrize("cls", [ConnectOk, ConnectSocketOk, AcceptOk])
@pytest.mark.parametrize(("local", "peer"), list(itertools.product(ENDPOINTS, repeat=2)))
def test_every_family_pair_reads_as_construct_reads_it(cls, local, peer):
    msg = cls(request_id=9, connection_id=0xFFFFFFFF, local=local, peer=peer)
    frame = encode(msg)
    got = decode(frame)
    assert isinstance(got, ConnectionReady)
    assert got == decode_with_construct(frame) == msg
    assert vars(got) == vars(msg)  # the same fields, set in the same order as __init__ sets them
    for endpoint, want in ((got.local, local), (got.peer, peer)):
        assert (endpoint.family, endpoint.packed, endpoint.scope_id) == (want.family, want.packed, want.scope_id)


@pytest.mark.parametrize(("local", "peer"), list(itertools.product(ENDPOINTS[::2], repeat=2)))
def test_every_byte_flipped_gives_the_same_verdict(local, peer):
    frame = encode(ConnectOk(request_id=9, connection_id=1, local=local, peer=peer))
    for at in range(HEADER_SIZE, len(frame)):
        for value in (0, 1, 2, 4, 0xFF):
            data = frame[:at] + bytes([value]) + frame[at + 1 :]
            assert verdict(decode, data) == verdict(decode_with_construct, data)
