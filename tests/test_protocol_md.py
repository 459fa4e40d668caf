"""The test vectors in PROTOCOL.md must match what the codec really does.

PROTOCOL.md holds two kinds of fenced blocks:

* ```vector: a Python expression (evaluated in the namespace of
  ``arca_control.protocol.messages``) and, on the next line, the frame in hex.
  ``decode`` must give the expression's value and ``encode`` the bytes.
* ```malformed: the name of an exception class from ``arca_control.protocol.errors``
  and the input in hex. ``decode`` must raise exactly that class, and the
  incremental ``FrameDecoder`` must raise some ``ProtocolError``.

So the spec cannot drift from the code without a test failing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from arca_control.protocol import errors, messages
from arca_control.protocol.codec import FrameDecoder, decode, encode

SPEC = Path(__file__).resolve().parent.parent / "PROTOCOL.md"
BLOCK = re.compile(r"^```(vector|malformed)\n(.*?)\n```$", re.MULTILINE | re.DOTALL)
NAMESPACE = {**vars(messages)}

#: Every error class the malformed vectors must show at least once.
MALFORMED_CLASSES = {
    "TruncatedFrame",
    "TrailingBytes",
    "OversizedFrame",
    "UnknownMessageType",
    "InvalidField",
    "UnsupportedVersion",
}


def blocks(kind: str) -> list[tuple[str, bytes]]:
    """``(first line, bytes)`` of every block of ``kind`` in PROTOCOL.md."""
    found = []
    for match in BLOCK.finditer(SPEC.read_text(encoding="utf-8")):
        if match.group(1) != kind:
            continue
        lines = match.group(2).strip().splitlines()
        assert len(lines) == 2, f"a {kind} block needs exactly two lines: {lines}"
        found.append((lines[0].strip(), bytes.fromhex(lines[1])))
    return found


VECTORS = blocks("vector")
MALFORMED = blocks("malformed")


@pytest.mark.parametrize(("expression", "data"), VECTORS, ids=[e for e, _ in VECTORS])
def test_vector(expression: str, data: bytes) -> None:
    message = eval(expression, dict(NAMESPACE))
    assert decode(data) == message
    assert encode(message) == data


@pytest.mark.parametrize(("name", "data"), MALFORMED, ids=[f"{n}-{d.hex()}" for n, d in MALFORMED])
def test_malformed(name: str, data: bytes) -> None:
    expected = getattr(errors, name)
    with pytest.raises(errors.ProtocolError) as caught:
        decode(data)
    assert type(caught.value) is expected  # exactly this class, not a subclass or parent

    decoder = FrameDecoder()
    decoder.feed(data)
    decoder.feed(b"")
    with pytest.raises(errors.ProtocolError):
        list(decoder)  # a valid frame before the fault may come out first


def test_every_message_type_has_a_vector() -> None:
    covered = {type(eval(expression, dict(NAMESPACE))) for expression, _ in VECTORS}
    missing = {cls.__name__ for cls in messages.REGISTRY.values()} - {cls.__name__ for cls in covered}
    assert not missing, f"no vector for {sorted(missing)}"


def test_every_malformed_class_is_shown() -> None:
    missing = MALFORMED_CLASSES - {name for name, _ in MALFORMED}
    assert not missing, f"no malformed vector raising {sorted(missing)}"
