"""Codec mode: the in-process target, and its run. ``decode`` and ``FrameDecoder`` on every input, checked against the spec.

The contract: ``decode(data)`` raises the ``ProtocolError`` subclass PROTOCOL.md
gives (``oracle.spec_verdict``), or returns a message that encodes back to
exactly ``data``; ``FrameDecoder`` fed the same bytes one at a time yields
exactly the frames ``decode`` accepts, in order, and raises only
``ProtocolError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from arca_control.protocol import codec, errors
from arca_control.protocol.wire import DEFAULT_MAX_PAYLOAD, HEADER_SIZE, LENGTH_FIELD_MAX

from .mutations import mutate
from .oracle import spec_verdict
from .run import Options, Run
from .schema import ALL_TYPES, random_message

if TYPE_CHECKING:
    import collections
    import random
    from collections.abc import Sequence
    from pathlib import Path

    from arca_control.protocol.messages import Message


def check_codec(data: bytes, outcomes: collections.Counter[str] | None = None) -> list[str]:
    """Every way ``data`` breaks the codec's contract; empty if it keeps it."""
    problems: list[str] = []
    whole = decode_whole(data, DEFAULT_MAX_PAYLOAD, problems, outcomes)
    decode_whole(data, LENGTH_FIELD_MAX, problems, None)  # the guest's limit for frames from its monitor
    try:
        expected, expected_error = split_frames(data)
    except Exception as exc:  # decode of one whole frame inside data broke the contract
        return [*problems, f"decode of a frame inside the input raised {exc!r}"]
    check_incremental(data, whole, expected, expected_error, problems)
    return problems


def decode_whole(
    data: bytes, limit: int, problems: list[str], outcomes: collections.Counter[str] | None
) -> Message | None:
    """``decode`` of all of ``data`` with a payload limit: problems if its verdict is not the spec's, or it does not round trip."""
    verdict = spec_verdict(data, limit)
    try:
        msg = codec.decode(data, max_payload=limit)
    except errors.ProtocolError as exc:
        if outcomes is not None:
            outcomes[type(exc).__name__] += 1
        if type(exc) is not verdict:
            problems.append(f"decode(max_payload={limit}) raised {exc!r}; PROTOCOL.md says {verdict}")
        return None
    except Exception as exc:
        problems.append(f"decode(max_payload={limit}) raised {exc!r}")
        return None
    if outcomes is not None:
        outcomes["ok"] += 1
    if verdict is not None:
        problems.append(f"decode(max_payload={limit}) accepted {msg!r}; PROTOCOL.md says {verdict.__name__}")
    try:
        again = codec.encode(msg)
    except Exception as exc:
        problems.append(f"decode(max_payload={limit}) gave {msg!r}, which encode refuses: {exc!r}")
        return msg
    if again != data:
        problems.append(f"decode(max_payload={limit}) gave {msg!r}, which encodes to {again.hex(' ')}")
    return msg


def split_frames(data: bytes) -> tuple[list[Message], type[errors.ProtocolError] | None]:
    """The oracle for FrameDecoder: each whole frame in turn through ``decode``.

    Returns the messages before the first bad or unfinished frame, and the
    error class FrameDecoder must raise there: decode's for a whole frame; for
    one cut by the end of the input, a header check's as soon as the header is
    complete, else TruncatedFrame (which is what ``spec_verdict`` of the rest says).
    """
    messages: list[Message] = []
    pos = 0
    while pos < len(data):
        header = codec.peek_header(data[pos:])
        if header is None or pos + HEADER_SIZE + header[1] > len(data):
            return messages, spec_verdict(data[pos:], DEFAULT_MAX_PAYLOAD)
        end = pos + HEADER_SIZE + header[1]
        try:
            messages.append(codec.decode(data[pos:end]))
        except errors.ProtocolError as exc:
            return messages, type(exc)
        pos = end
    return messages, None


def check_incremental(
    data: bytes,
    whole: Message | None,
    expected: list[Message],
    expected_error: type[errors.ProtocolError] | None,
    problems: list[str],
) -> None:
    """``FrameDecoder`` fed ``data`` a byte at a time: what it yields and raises, against decode of each frame."""
    decoder = codec.FrameDecoder()
    got: list[Message] = []
    error: errors.ProtocolError | None = None
    try:
        for i in range(len(data)):
            decoder.feed(data[i : i + 1])
            got.extend(decoder)
        decoder.feed(b"")
        got.extend(decoder)
    except errors.ProtocolError as exc:
        error = exc
    except Exception as exc:
        problems.append(f"FrameDecoder raised {exc!r} after yielding {got!r}")
        return
    if error is not None:
        try:
            decoder.next_message()
            problems.append("FrameDecoder did not raise its error again")
        except errors.ProtocolError as again:
            if again is not error:
                problems.append(f"FrameDecoder raised {again!r} after {error!r}")
        except Exception as exc:
            problems.append(f"FrameDecoder raised {exc!r} after {error!r}")
    try:
        consumed = b"".join(codec.encode(m) for m in got)
    except Exception as exc:
        problems.append(f"FrameDecoder yielded a message encode refuses: {exc!r}")
        return
    if data[: len(consumed)] != consumed:
        problems.append(f"FrameDecoder yielded {got!r}, which is not what the input starts with")
    if got != expected:
        problems.append(f"FrameDecoder yielded {got!r}, decode of each frame gave {expected!r}")
    if type(error) is not (expected_error or type(None)):
        want = expected_error.__name__ if expected_error else "nothing"
        problems.append(f"FrameDecoder raised {error!r}; decode of each frame in turn says {want}")
    if whole is not None and (got != [whole] or error is not None):
        problems.append(f"decode gave {whole!r}, FrameDecoder yielded {got!r} and raised {error!r}")


def run_codec(options: Options, rng: random.Random, replay: Sequence[Path] = ()) -> int:
    run = Run("codec", options)
    try:
        while run.more() if not replay else run.cases < len(replay):
            if replay:
                data, source = replay[run.cases].read_bytes(), [f"replayed from {replay[run.cases]}"]
            else:
                msg = random_message(rng, ALL_TYPES[run.cases % len(ALL_TYPES)])  # every type in turn
                names, data = mutate(rng, msg)
                run.counts["mutations"].update(names)
                source = []
            problems = check_codec(data, run.counts["decode"])
            if problems:
                run.finding(data, source + problems, save=not replay)
            run.cases += 1
            run.progress()
    except KeyboardInterrupt:
        print("interrupted")
    return run.summary(options.seed)
