"""Hypothesis strategies for every control message, derived from the declared wire fields."""

from __future__ import annotations

import errno

from hypothesis import strategies as st

from arca_control.protocol import wire
from arca_control.protocol.messages import REGISTRY, ControlEvent, payload_fields
from arca_control.protocol.wire import Capability, Endpoint, ipv6_host

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.builds(ipv6_host, st.binary(min_size=16, max_size=16), st.integers(0, 0xFFFFFFFF))
ports = st.integers(0, 0xFFFF)
known_errnos = st.sampled_from(sorted(errno.errorcode))
# A UTF-8 text of at most 255 bytes (the field's u8 length counts bytes, not characters).
short_text = st.text(max_size=80).filter(lambda s: len(s.encode()) <= 255)

def _valid(enum_type, value: int) -> bool:
    try:
        enum_type(value)
    except ValueError:
        return False
    return True


unix_paths = st.one_of(
    st.just(""),
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40)
    .map(lambda s: "/" + s)
    .filter(lambda s: len(s.encode()) <= 107),
)


FIELD_STRATEGIES = {
    id(wire.U16): st.integers(0, 0xFFFF),
    id(wire.U32): st.integers(0, 0xFFFFFFFF),
    id(wire.ENDPOINT): st.one_of(
        st.builds(Endpoint, st.one_of(ipv4, ipv6), ports),
        st.builds(Endpoint, unix_paths, st.just(0)),
    ),
    # One-byte enums and flags: any member (for flags, any mix of bits).
    **{
        key: st.sampled_from([enum_type(v) for v in range(256) if _valid(enum_type, v)])
        for key, enum_type in wire.U8_ENUMS.items()
    },
    id(wire.U64): st.integers(0, 2**64 - 1),
    id(wire.COUNTS): st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)), max_size=5).map(tuple),
    id(wire.ADDRESS_LIST): st.lists(
        st.tuples(st.sampled_from(list(wire.SockType)), st.builds(Endpoint, st.one_of(ipv4, ipv6), ports)),
        max_size=6,
    ).map(tuple),
    id(wire.ERRNO): known_errnos,
    id(wire.END_STATUS): st.one_of(st.just(0), known_errnos),
    id(wire.TEXT): short_text,
    id(wire.VERSION): st.just(wire.PROTOCOL_VERSION),
    id(wire.CAPABILITIES): st.integers(0, 0xFFFFFFFF).map(Capability),
}


def message_of(cls):
    fields = {f.name: FIELD_STRATEGIES[id(f.metadata["wire"])] for f in payload_fields(cls)}
    request_ids = st.just(0) if issubclass(cls, ControlEvent) else st.integers(1, 0xFFFFFFFF)
    return st.builds(cls, request_id=request_ids, **fields)


messages = st.one_of([message_of(cls) for cls in REGISTRY.values()])
