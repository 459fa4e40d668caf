"""A spawned ``arca-monitor --fd`` driven with hand-made frames, nothing of the guest API in between.

As a hostile guest would drive it, or one written from PROTOCOL.md alone: the
tests of the monitor process, of its conformance to the spec and of its
counters use it (the ``raw`` fixture in conftest gives one).
"""

from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, TypeVar

from arca_control.protocol.channel import socketpair
from arca_control.protocol.codec import decode, encode
from arca_control.protocol.messages import ErrorReply, Hello, HelloOk, Message

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

M = TypeVar("M", bound=Message)


def expect(message: Message | None, kind: type[M], code: int | None = None) -> M:
    """``message``, which must be exactly a ``kind`` (and, given ``code``, an error reply with that errno)."""
    if code is not None:
        assert isinstance(message, ErrorReply), message
        assert message.errno == code, message
    assert type(message) is kind, message
    assert isinstance(message, kind)  # (for the type checker)
    return message


class RawMonitor:
    """A monitor on an inherited control channel, and our end of it."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.sock, theirs = socketpair()
        self.sock.settimeout(10)
        self.stderr_path = tmp_path / f"monitor-{id(self)}.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "arca_monitor", "--fd", str(theirs.fileno()), *args],
                pass_fds=(theirs.fileno(),),
                stderr=stderr,
            )
        theirs.close()

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.send(data)

    def receive(self) -> Message | None:
        """The next frame (its descriptors closed), or None at the end of the session."""
        message, groups = self.receive_with_fds()
        for fd in (fd for group in groups for fd in group):
            os.close(fd)
        return message

    def receive_with_fds(self) -> tuple[Message | None, list[list[int]]]:
        """The next frame and, for each control message beside it, the descriptors it carries."""
        fds = array.array("i")
        data, ancillary, _, _ = self.sock.recvmsg(70000, socket.CMSG_SPACE(4 * fds.itemsize))
        groups = []
        for level, kind, payload in ancillary:
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            groups.append(list(fds))
        return (decode(data) if data else None), groups

    def request(self, message: Message) -> Message | None:
        self.send(encode(message))
        return self.receive()

    def hello(self) -> None:
        expect(self.request(Hello(request_id=1)), HelloOk)

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def finish(self) -> str:
        """Close our end: the monitor must exit 0, with no traceback or internal error in its log. Returns the log."""
        self.sock.close()
        assert self.process.wait(timeout=10) == 0
        log = self.stderr_path.read_text()
        assert "Traceback" not in log
        assert "internal error" not in log
        return log

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.sock.close()
