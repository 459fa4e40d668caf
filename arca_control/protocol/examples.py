"""Random valid values of each kind the wire carries, drawn from a ``random.Random``.

``wire.py`` gives each field type one of these as its ``draw``; the tests
(through hypothesis' ``st.randoms()``, which shrinks what a ``Random`` returns),
the fuzzer and the bench all take their values from there. Every function
draws the simplest choice first (small numbers, the first option), so that a
shrunk draw is a simple value.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, TypeVar

from .values import UNIX_PATH_MAX, AddressFamily, Endpoint

if TYPE_CHECKING:
    import random
    from collections.abc import Callable

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")

KNOWN_ERRNOS = tuple(sorted(errno.errorcode))

#: Code point ranges a text draws from: ASCII first, then control characters, then
#: the two-, three- and four-byte UTF-8 ranges (surrogates left out: not encodable).
_TEXT_RANGES = ((0x20, 0x7E), (0x00, 0x1F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF))
#: A path has no NUL: the same ranges with the control characters after it only.
_PATH_RANGES = ((0x20, 0x7E), (0x01, 0x1F), *_TEXT_RANGES[2:])


def uint(top: int) -> Callable[[random.Random], int]:
    """0..top, small values (up to 255) as often as the whole range."""

    def draw(rng: random.Random) -> int:
        return rng.randint(0, rng.choice((min(top, 0xFF), top)))

    return draw


def text(rng: random.Random, budget: int = 255, ranges: tuple[tuple[int, int], ...] = _TEXT_RANGES) -> str:
    """A string whose UTF-8 form is at most ``budget`` bytes (often much shorter)."""
    limit = rng.randint(0, rng.choice((min(budget, 24), budget)))
    chars: list[str] = []
    size = 0
    while True:
        low, high = rng.choice(ranges)
        char = chr(rng.randint(low, high))
        size += len(char.encode())
        if size > limit:
            return "".join(chars)
        chars.append(char)


def errno_code(rng: random.Random) -> int:
    return rng.choice(KNOWN_ERRNOS)


def end_status(rng: random.Random) -> int:
    """0 (a clean end) one time in four, else a known errno."""
    return errno_code(rng) if rng.randrange(4) else 0


def endpoint(rng: random.Random) -> Endpoint:
    """An IPv4, IPv6 (with a scope id or not) or AF_UNIX endpoint (named or unnamed)."""
    family = rng.randrange(3)
    if family == 0:
        return Endpoint.from_packed(AddressFamily.IPV4, rng.randbytes(4), rng.randint(0, 0xFFFF))
    if family == 1:
        scope_id = rng.getrandbits(32) if rng.randrange(2) else 0
        return Endpoint.from_packed(AddressFamily.IPV6, rng.randbytes(16), rng.randint(0, 0xFFFF), scope_id)
    if not rng.randrange(8):
        return Endpoint("", 0)
    return Endpoint("/" + text(rng, UNIX_PATH_MAX - 1, _PATH_RANGES), 0)


def pairs(
    draw_first: Callable[[random.Random], A], draw_second: Callable[[random.Random], B], most: int
) -> Callable[[random.Random], tuple[tuple[A, B], ...]]:
    """Up to ``most`` pairs of values."""

    def draw(rng: random.Random) -> tuple[tuple[A, B], ...]:
        return tuple((draw_first(rng), draw_second(rng)) for _ in range(rng.randint(0, most)))

    return draw


def one_of(values: tuple[T, ...]) -> Callable[[random.Random], T]:
    """Any of ``values`` (every value of a small enum)."""

    def draw(rng: random.Random) -> T:
        return rng.choice(values)

    return draw


def constant(value: T) -> Callable[[random.Random], T]:
    def draw(rng: random.Random) -> T:
        return value

    return draw
