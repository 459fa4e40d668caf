"""The bench's child processes (the helper programs, socat) and what /proc says about a process."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from arca_control import ArcaSession

CLOCK_TICK = os.sysconf("SC_CLK_TCK")

_HELPERS = Path(__file__).resolve().parent / "helpers"
#: The peer programs (``helpers/``), run by path so that they import nothing of ours.
SINK = _HELPERS / "sink.py"
SOURCE = _HELPERS / "source.py"
ACCEPTOR = _HELPERS / "acceptor.py"
LOADGEN = _HELPERS / "loadgen.py"
HTTP_BLOB = _HELPERS / "http_blob.py"
PLAIN_RELAY = _HELPERS / "plain_relay.py"
PEER = _HELPERS / "peer.py"
#: The programs case's guest, which (unlike the peers) imports arca_control.
GUEST = _HELPERS / "guest.py"


def helper(program: Path, alarm: float, *args: object) -> list[str]:
    """The command line of a helper program, with an alarm a little past ``alarm`` seconds."""
    return [sys.executable, str(program), str(int(alarm) + 10), *map(str, args)]


class LineReader:
    """Lines from a child's pipe (the port it bound, then its result)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def line(self) -> str:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(4096)
            if not data:
                raise RuntimeError(f"helper process ended without a line (got {bytes(self._buffer)!r})")
            self._buffer += data
        line, _, rest = self._buffer.partition(b"\n")
        self._buffer = bytearray(rest)
        return line.decode()


@asynccontextmanager
async def spawned(argv: list[str], *, read_stderr: bool = False) -> AsyncIterator[tuple[trio.Process, LineReader]]:
    """A child process and a LineReader on its stdout (or stderr); killed and reaped on exit."""
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if read_stderr else subprocess.PIPE,
        stderr=subprocess.PIPE if read_stderr else None,
    )
    pipe = process.stderr if read_stderr else process.stdout
    if pipe is None:
        raise RuntimeError(f"no pipe from {argv[0]}")
    try:
        yield process, LineReader(pipe)
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.kill()
            await process.wait()
            await pipe.aclose()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), also readable while it is a zombie."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces and parentheses: split after the last ")".
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} for process {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def monitor_pid(session: ArcaSession) -> int:
    """The process id of the monitor a session started (every session the bench opens starts its own)."""
    if session.process is None:
        raise RuntimeError("the session runs no monitor process of its own")
    return session.process.pid
