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

import dataclasses
import itertools
import struct
from collections.abc import Callable

from . import errors, fastfields
from .messages import REGISTRY, Message, payload_fields
from .values import AddressFamily, Endpoint
from .wire import declared

#: A message's payload fields in wire order: (field name, reader) to parse, (field name, writer) to build.
ReadPlan = tuple[tuple[str, Callable[[bytes, int], tuple[object, int]]], ...]
WritePlan = tuple[tuple[str, Callable[[object], bytes]], ...]
#: Reads a run of plain integer fields with one ``struct`` call: (their values, the offset after them).
RunReader = Callable[[bytes, int], tuple[tuple[int, ...], int]]
#: A read step: one field (its name, its reader, None, ()), or a run of plain integer fields
#: (its first name, None, the run's reader, every name in it).
ReadStep = tuple[str, Callable[[bytes, int], tuple[object, int]] | None, RunReader | None, tuple[str, ...]]

#: The fixed-size unsigned integers whose readers check nothing but the bounds: a run of them is one unpack.
_UINT_FORMATS: dict[Callable[[bytes, int], tuple[object, int]], str] = {
    fastfields.read_u16: "H",
    fastfields.read_u32: "I",
    fastfields.read_u64: "Q",
}


def _run_reader(formats: str) -> RunReader:
    """One bounds check and one unpack for consecutive integer fields: what reading them one by one
    does (a short payload is the same ``InvalidField`` whichever of them runs past the end)."""
    layout = struct.Struct("<" + formats)
    unpack, size = layout.unpack_from, layout.size

    def read(data: bytes, at: int) -> tuple[tuple[int, ...], int]:
        if at + size > len(data):
            raise errors.InvalidField(fastfields.SHORT)
        return unpack(data, at), at + size

    return read


def compile_steps(plan: ReadPlan) -> tuple[ReadStep, ...]:
    """``plan`` with each run of two or more plain integer fields merged into one step."""
    steps: list[ReadStep] = []

    run: list[tuple[str, Callable[[bytes, int], tuple[object, int]], str]] = []

    def flush() -> None:
        if len(run) == 1:
            name, read, _ = run[0]
            steps.append((name, read, None, ()))
        elif run:
            steps.append((run[0][0], None, _run_reader("".join(fmt for _, _, fmt in run)), tuple(n for n, _, _ in run)))
        run.clear()

    for name, read in plan:
        fmt = _UINT_FORMATS.get(read)
        if fmt is None:
            flush()
            steps.append((name, read, None, ()))
        else:
            run.append((name, read, fmt))
    flush()
    return tuple(steps)


def _plain_fields(cls: type[Message]) -> bool:
    """Whether a ``cls`` is made by setting its fields and nothing else: every field is ``request_id``
    or a payload field, each taken by ``__init__``, and no ``__post_init__`` (true of every message
    today; a class for which it is not is built through its ``__init__``)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    every = {f.name for f in dataclasses.fields(cls)}
    return (
        names == every == {"request_id", *(f.name for f in payload_fields(cls))}
        and not hasattr(cls, "__post_init__")
        and not hasattr(cls, "__slots__")
    )


#: A whole payload of a fixed layout: the (offset, family) of each endpoint's family byte, one struct
#: for every field, and for each field its name and what it is (0 an integer, else an endpoint's family).
Shape = tuple[tuple[tuple[int, int], ...], struct.Struct, tuple[tuple[str, int], ...]]

#: An IP endpoint after its family byte, as ``fastfields.read_endpoint`` unpacks it: (format, size).
_ENDPOINT_FORMATS = {AddressFamily.IPV4: ("4sH", 7), AddressFamily.IPV6: ("16sIH", 23)}


def compile_shapes(plan: ReadPlan) -> dict[int, tuple[Shape, ...]]:
    """For a payload of nothing but plain integers and at least one endpoint: each layout it has when every
    endpoint is IPv4 or IPv6, by the payload's length; empty for any other payload.

    A payload of one of these lengths whose family bytes say that layout holds exactly what the
    field-by-field readers would read from it (the same struct formats, back to back, and nothing
    left over), so one unpack reads it whole; any other payload (AF_UNIX, a bad family, a short
    or long one) goes field by field, to the same values or the same error.
    """
    fields: list[tuple[str, str | None]] = []
    for name, read in plan:
        if read is fastfields.read_endpoint:
            fields.append((name, None))
        elif read in _UINT_FORMATS:
            fields.append((name, _UINT_FORMATS[read]))
        else:
            return {}
    endpoints = sum(fmt is None for _, fmt in fields)
    shapes: dict[int, list[Shape]] = {}
    for families in itertools.product(_ENDPOINT_FORMATS, repeat=endpoints):
        which = iter(families)
        formats, offsets, takes, at = ["<"], [], [], 0
        for name, fmt in fields:
            if fmt is None:
                family = next(which)
                fmt, size = _ENDPOINT_FORMATS[family]
                offsets.append((at, int(family)))
                formats.append("x" + fmt)
                takes.append((name, int(family)))
                at += size
            else:
                formats.append(fmt)
                takes.append((name, 0))
                at += struct.calcsize("<" + fmt)
        shapes.setdefault(at, []).append((tuple(offsets), struct.Struct("".join(formats)), tuple(takes)))
    return {size: tuple(found) for size, found in shapes.items()} if endpoints else {}


def _fixed(payload: bytes, shapes: dict[int, tuple[Shape, ...]]) -> dict[str, object] | None:
    """The fields of ``payload`` read by the one shape that fits it exactly, or None if none does."""
    for offsets, layout, takes in shapes.get(len(payload), ()):
        for at, family in offsets:
            if payload[at] != family:
                break
        else:
            got = layout.unpack(payload)
            values: dict[str, object] = {}
            i = 0
            for name, family in takes:
                if not family:
                    values[name] = got[i]
                    i += 1
                elif family == _IPV4:
                    values[name] = _from_ipv4(got[i], got[i + 1])
                    i += 2
                else:
                    values[name] = _from_ipv6(got[i], got[i + 2], got[i + 1])
                    i += 3
            return values
    return None


_IPV4 = int(AddressFamily.IPV4)
# The same constructors as fastfields.read_endpoint's, so a fixed shape builds the same endpoints.
_from_ipv4 = Endpoint.from_wire_ipv4
_from_ipv6 = Endpoint.from_wire_ipv6

#: For each message type: its class, and how to read its payload, field by field.
PLANS: dict[int, tuple[type[Message], ReadPlan]] = {
    int(kind): (cls, tuple((f.name, declared(f).read) for f in payload_fields(cls))) for kind, cls in REGISTRY.items()
}
#: The same, as the parser runs it: runs of integers merged, whether the class is built without
#: ``__init__``, and its fixed shapes.
_STEPS: dict[int, tuple[type[Message], tuple[ReadStep, ...], bool, dict[int, tuple[Shape, ...]]]] = {
    kind: (cls, compile_steps(plan), _plain_fields(cls), compile_shapes(plan)) for kind, (cls, plan) in PLANS.items()
}
_new = object.__new__

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
    cls, steps, plain, shapes = _STEPS[kind]
    values = _fixed(payload, shapes) if shapes else None
    if values is None:
        values = _read_steps(cls, steps, request_id, payload)
    if not plain:
        return cls(request_id=request_id, **values)
    # A frozen dataclass's __init__ sets each field through object.__setattr__, which costs
    # more than reading the whole payload; the fields set here are exactly the ones it sets.
    msg = _new(cls)
    fields = msg.__dict__
    fields["request_id"] = request_id
    fields.update(values)
    return msg


def _read_steps(cls: type[Message], steps: tuple[ReadStep, ...], request_id: int, payload: bytes) -> dict[str, object]:
    """The fields of ``payload``, read field by field (and run by run)."""
    values: dict[str, object] = {}
    at = 0
    try:
        for name, read, read_run, names in steps:
            if read is not None:
                values[name], at = read(payload, at)
            elif read_run is not None:
                got, at = read_run(payload, at)
                values.update(zip(names, got, strict=True))
    except errors.RemoteProtocolError as exc:
        # The field's reader says what is wrong and with which class; the message and id are known here.
        raise type(exc)(f"{cls.__name__}: {exc}", request_id=request_id) from None
    if at != len(payload):
        raise errors.TrailingBytes(f"{cls.__name__}: bytes left after the last field", request_id=request_id)
    return values
