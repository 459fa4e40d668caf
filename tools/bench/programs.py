"""Case i: what an ordinary program gets, each API direct and through the monitor, in one run.

Every row is one program (``helpers/guest.py``): an API (trio's streams,
asyncio's, blocking sockets), a direction and a read or write size. The same
program runs in a process of its own, once with its connection made directly
(``trio.open_tcp_stream``, ``asyncio.open_connection``,
``socket.create_connection``) and once through a monitor of its own
(``session.connect``, ``arca_control.aio``, ``arca_control.sync``), against one
peer process for the whole row (``helpers/peer.py``), interleaved round by
round. A download is timed by the program (its go byte to the end), an upload
by the peer (its go byte to the end), as cases a and b are.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .base import CHUNK, Sizes, transfer_timeout
from .processes import GUEST, PEER, LineReader, helper, spawned
from .transfers import Transfer, TransferResult, sink_port, transfer_case

if TYPE_CHECKING:
    from .transfers import Variant

KIB = 1 << 10
#: A guest's start and close, its monitor's included, besides its transfer.
START_SECONDS = 30


class Api(enum.StrEnum):
    """The API a program moves its bytes with: trio streams, asyncio streams, blocking sockets."""

    TRIO = "trio"
    AIO = "aio"
    SYNC = "sync"


class Way(enum.StrEnum):
    """How the program's connection is made: the two variants of every row."""

    DIRECT = "direct"
    ARCA = "arca"


@dataclass(frozen=True)
class Program:
    """One row's program: what it calls, which way the bytes go, how many per call."""

    name: str
    label: str
    api: Api
    down: bool
    chunk: int


PROGRAMS = (
    Program("trio_download_64k", "trio download, receive_some(64 KiB)", Api.TRIO, True, 64 * KIB),
    Program("trio_download_1m", "trio download, receive_some(1 MiB)", Api.TRIO, True, CHUNK),
    Program("trio_upload_64k", "trio upload, send_all(64 KiB)", Api.TRIO, False, 64 * KIB),
    Program("aio_download", "asyncio download, read(64 KiB)", Api.AIO, True, 64 * KIB),
    Program("aio_upload", "asyncio upload, write(64 KiB) + drain", Api.AIO, False, 64 * KIB),
    Program("sync_download", "blocking download, recv(64 KiB)", Api.SYNC, True, 64 * KIB),
    Program("sync_upload", "blocking upload, sendall(64 KiB)", Api.SYNC, False, 64 * KIB),
)


@dataclass(frozen=True)
class ProgramRow:
    """One row: its program, and every round of it each way."""

    program: Program
    transfers: TransferResult  # variants "direct" and "arca"


@dataclass(frozen=True)
class ProgramsResult:
    """Every row, in the order of ``PROGRAMS``."""

    rows: tuple[ProgramRow, ...]

    def as_json(self) -> dict[str, object]:
        return {row.program.name: {"label": row.program.label, **row.transfers.as_json()} for row in self.rows}


def moved(line: str, expected: int) -> float:
    """The seconds on a line of ``bytes seconds``, once it says every byte went."""
    nbytes, seconds = line.split()
    if int(nbytes) != expected:
        raise RuntimeError(f"{nbytes} bytes moved, not {expected}")
    return float(seconds)


async def run_once(program: Program, way: Way, port: int, peer: LineReader, nbytes: int) -> Transfer:
    """The program once, ``way``, to the peer on ``port``: timed by the program (down) or the peer (up)."""
    timeout = transfer_timeout(nbytes) + START_SECONDS
    direction = "down" if program.down else "up"
    argv = helper(GUEST, timeout, program.api, direction, program.chunk, way, port, nbytes)
    with trio.fail_after(timeout):
        async with spawned(argv) as (guest, out):
            seconds = moved(await out.line(), nbytes)
            if not program.down:
                seconds = moved(await peer.line(), nbytes)
            if await guest.wait() != 0:
                raise RuntimeError(f"the {program.api} guest ({way}) exited {guest.returncode}")
    return Transfer(nbytes, seconds)


async def program_row(program: Program, sizes: Sizes) -> ProgramRow:
    nbytes = sizes.program_bytes
    alarm = 2 * sizes.repeats * (transfer_timeout(nbytes) + START_SECONDS)
    mode = ("send", nbytes) if program.down else ("sink",)
    async with spawned(helper(PEER, alarm, *mode)) as (_, peer):
        port = await sink_port(peer)
        variants: dict[str, Variant] = {way.value: functools.partial(run_once, program, way, port, peer) for way in Way}
        transfers = await transfer_case(f"programs: {program.label}", nbytes, sizes.repeats, variants)
    return ProgramRow(program, transfers)


async def programs_case(sizes: Sizes) -> ProgramsResult:
    return ProgramsResult(tuple([await program_row(program, sizes) for program in PROGRAMS]))
