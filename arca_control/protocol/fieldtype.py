"""``FieldType``: the one declaration of a wire field type, and makers for its common shapes.

A field type binds its construct layout (``layouts.py``), the fast reader and
writer the codec uses (``fastfields.py``), and the values everything that
generates, checks or measures fields tries it with (edges, a random draw from
``examples.py``, a sample). ``wire.py`` declares every field type of the
protocol with it.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Never, TypeVar

from construct import SizeofError

from . import examples, fastfields, layouts

if TYPE_CHECKING:
    import random
    from collections.abc import Callable

    from construct import Construct

T = TypeVar("T", covariant=True)
E = TypeVar("E", bound=enum.IntEnum | enum.IntFlag)


@dataclass(frozen=True, eq=False)
class FieldType(Generic[T]):
    """One wire field type, declared once: how it is laid out, read, written, and tried.

    ``T`` is the Python value a message holds in such a field. Compared by
    identity: each declaration in ``wire.py`` is the one object for its type.
    """

    #: Its name in PROTOCOL.md section 3.
    name: str
    #: The layout, declared with construct: the reference the fast path is held to.
    construct: Construct[T, Never]
    #: The fast reader: (payload, offset) to (value, next offset); raises InvalidField
    #: or UnsupportedVersion for the bytes its layout refuses.
    read: Callable[[bytes, int], tuple[T, int]]
    #: The fast writer: a value to its bytes; LocalProtocolError for what does not fit.
    write: Callable[[object], bytes]
    #: Valid values at the edges of the range (bounds, odd forms), tried first and often.
    edges: tuple[T, ...]
    #: Any valid value, at random (the simplest ones for the first choices of ``rng``).
    draw: Callable[[random.Random], T]
    #: A typical value: what the bench encodes and decodes.
    sample: T
    #: Encodings no valid value starts with: the readers must refuse each of them,
    #: whatever follows (InvalidField, or UnsupportedVersion for a version).
    invalid: tuple[bytes, ...] = ()
    #: For a one-byte enum or flag field, its enum (its values are exactly the field's).
    enum: type[enum.Enum] | None = None

    @functools.cached_property
    def size(self) -> int | None:
        """The bytes it always takes; None if its length is in its bytes (text, endpoint, lists)."""
        try:
            return self.construct.sizeof()
        except SizeofError:
            return None

    def __repr__(self) -> str:
        return f"<FieldType {self.name}>"


def declared(field: dataclasses.Field[object]) -> FieldType[object]:
    """The field type a message's payload field declares (``messages.field``)."""
    kind = field.metadata.get("wire")
    if not isinstance(kind, FieldType):
        raise TypeError(f"{field.name} declares no wire FieldType: {kind!r}")
    return kind


def u8_enum(name: str, enum_type: type[E], sample: E) -> FieldType[E]:
    """A one-byte field whose values are exactly ``enum_type``'s (for flags: any mix of its bits)."""
    values = tuple(enum_type(v) for v in range(256) if _is_value(enum_type, v))
    return FieldType(
        name=name,
        construct=layouts.u8_enum(enum_type),
        read=fastfields.u8_enum_reader(values, enum_type.__name__),
        write=fastfields.u8_enum_writer(values, enum_type.__name__),
        edges=values,
        draw=examples.one_of(values),
        sample=sample,
        invalid=tuple(bytes([v]) for v in range(256) if not _is_value(enum_type, v)),
        enum=enum_type,
    )


def _is_value(enum_type: type[E], value: int) -> bool:
    try:
        enum_type(value)
    except ValueError:
        return False
    return True


def uint(name: str, size: int, sample: int) -> FieldType[int]:
    """An unsigned little-endian integer of ``size`` bytes: every value fits, none is invalid."""
    top = (1 << 8 * size) - 1
    return FieldType(
        name=name,
        construct={2: layouts.U16, 4: layouts.U32, 8: layouts.U64}[size],
        read={2: fastfields.read_u16, 4: fastfields.read_u32, 8: fastfields.read_u64}[size],
        write=fastfields.uint_writer(size),
        edges=(0, 1, top - 1, top),
        draw=examples.uint(top),
        sample=sample,
    )
