"""Payloads parsed and built without construct: each message's fields through their fast readers and writers.

construct parses a small frame in about 70 µs and builds one in 40; the
control plane needs well over 100k frames per second. This module compiles
each message's declared fields (``messages.py``) into a plan of the fast
readers and writers their field types carry (``wire.py``, ``fastfields.py``),
once, at import. A reader raises exactly the error class the construct schema
would raise for the same bytes, field by field in the same order; a writer
refuses what construct's builder refuses. ``tests/test_fastpath.py`` holds the
two to that on generated and mutated frames. construct stays the declaration
of the layout, and the codec of reference.
"""

from __future__ import annotations

from collections.abc import Callable

from . import errors
from .messages import REGISTRY, Message, payload_fields
from .wire import declared

#: A message's payload fields in wire order: (field name, reader) to parse, (field name, writer) to build.
ReadPlan = tuple[tuple[str, Callable[[bytes, int], tuple[object, int]]], ...]
WritePlan = tuple[tuple[str, Callable[[object], bytes]], ...]

#: For each message type: its class, and how to read its payload.
PLANS: dict[int, tuple[type[Message], ReadPlan]] = {
    int(kind): (cls, tuple((f.name, declared(f).read) for f in payload_fields(cls))) for kind, cls in REGISTRY.items()
}

#: For each message class: how to build its payload.
BUILD_PLANS: dict[type[Message], WritePlan] = {
    cls: tuple((f.name, declared(f).write) for f in payload_fields(cls)) for cls in REGISTRY.values()
}


def build_payload(msg: Message) -> bytes:
    """The payload bytes of ``msg``; raises ``LocalProtocolError`` for a value that does not fit."""
    try:
        return b"".join([write(getattr(msg, name)) for name, write in BUILD_PLANS[type(msg)]])
    except errors.LocalProtocolError as exc:
        raise errors.LocalProtocolError(f"cannot encode {msg!r}: {exc}") from None


def parse_payload(kind: int, request_id: int, payload: bytes) -> Message:
    """The message of type ``kind`` whose payload is exactly ``payload`` (header already checked)."""
    cls, plan = PLANS[kind]
    values = {}
    at = 0
    try:
        for name, read in plan:
            values[name], at = read(payload, at)
    except errors.RemoteProtocolError as exc:
        # The field's reader says what is wrong and with which class; the message and id are known here.
        raise type(exc)(f"{cls.__name__}: {exc}", request_id=request_id) from None
    if at != len(payload):
        raise errors.TrailingBytes(f"{cls.__name__}: bytes left after the last field", request_id=request_id)
    return cls(request_id=request_id, **values)
