"""The programs case's guest: an ordinary program moving bytes with one API, direct or through the monitor.

    guest.py ALARM API DIRECTION CHUNK VIA PORT NBYTES

API is ``trio`` (a ``trio.abc.HalfCloseableStream``), ``aio`` (asyncio's
``StreamReader``/``StreamWriter``) or ``sync`` (a blocking socket); DIRECTION
``down`` (send a go byte, read CHUNK at a time to the end) or ``up`` (wait for
the go byte, write NBYTES CHUNK at a time, shut down, wait for the peer's
close); VIA ``direct`` (trio.open_tcp_stream, asyncio.open_connection,
socket.create_connection) or ``arca`` (session.connect, aio's and sync's
sessions: the same program, only the connection comes from the monitor). The
peer is ``peer.py`` on 127.0.0.1:PORT. It prints the bytes it moved and the
seconds from the go byte to the end; the session's start and close are
outside them.

Unlike the other helpers it imports arca_control (and trio): it is the guest.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time

import trio

import arca_control
import arca_control.aio
import arca_control.sync

HOST = "127.0.0.1"


class Moved:
    """Bytes moved and seconds taken, printed as one line."""

    def __init__(self, nbytes: int, seconds: float) -> None:
        self.nbytes, self.seconds = nbytes, seconds

    def __str__(self) -> str:
        return f"{self.nbytes} {self.seconds}"


def chunks(nbytes: int, chunk: int) -> list[int]:
    """The sizes of the writes that make up ``nbytes``: full chunks, then the rest."""
    return [chunk] * (nbytes // chunk) + ([nbytes % chunk] if nbytes % chunk else [])


# --- trio -------------------------------------------------------------------------------------


async def trio_transfer(stream: trio.abc.HalfCloseableStream, down: bool, chunk: int, nbytes: int) -> Moved:
    if down:
        await stream.send_all(b"g")
        start, received = time.perf_counter(), 0
        while data := await stream.receive_some(chunk):
            received += len(data)
        return Moved(received, time.perf_counter() - start)
    if await stream.receive_some(1) != b"g":
        raise RuntimeError("no go byte from the peer")
    data = bytes(chunk)
    start = time.perf_counter()
    for size in chunks(nbytes, chunk):
        await stream.send_all(data if size == chunk else data[:size])
    await stream.send_eof()
    while await stream.receive_some(65536):  # the peer's close: every byte was taken
        pass
    return Moved(nbytes, time.perf_counter() - start)


async def trio_program(via: str, port: int, down: bool, chunk: int, nbytes: int) -> Moved:
    if via == "arca":
        async with arca_control.open_session() as session:
            arca = await session.connect(HOST, port)
            async with arca:
                return await trio_transfer(arca, down, chunk, nbytes)
    direct = await trio.open_tcp_stream(HOST, port)
    async with direct:
        return await trio_transfer(direct, down, chunk, nbytes)


# --- asyncio ----------------------------------------------------------------------------------


async def aio_transfer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, down: bool, chunk: int,
                       nbytes: int) -> Moved:
    try:
        if down:
            writer.write(b"g")
            await writer.drain()
            start, received = time.perf_counter(), 0
            while data := await reader.read(chunk):
                received += len(data)
            return Moved(received, time.perf_counter() - start)
        await reader.readexactly(1)
        data = bytes(chunk)
        start = time.perf_counter()
        for size in chunks(nbytes, chunk):
            writer.write(data if size == chunk else data[:size])
            await writer.drain()
        writer.write_eof()
        while await reader.read(65536):
            pass
        return Moved(nbytes, time.perf_counter() - start)
    finally:
        writer.close()
        await writer.wait_closed()


async def aio_program(via: str, port: int, down: bool, chunk: int, nbytes: int) -> Moved:
    if via == "arca":
        async with arca_control.aio.open_session() as session:
            reader, writer = await session.open_connection(HOST, port)
            return await aio_transfer(reader, writer, down, chunk, nbytes)
    reader, writer = await asyncio.open_connection(HOST, port)
    return await aio_transfer(reader, writer, down, chunk, nbytes)


# --- blocking sockets -------------------------------------------------------------------------


def sync_transfer(sock: socket.socket, down: bool, chunk: int, nbytes: int) -> Moved:
    with sock:
        if down:
            sock.sendall(b"g")
            start, received = time.perf_counter(), 0
            while data := sock.recv(chunk):
                received += len(data)
            return Moved(received, time.perf_counter() - start)
        if sock.recv(1) != b"g":
            raise RuntimeError("no go byte from the peer")
        data = bytes(chunk)
        start = time.perf_counter()
        for size in chunks(nbytes, chunk):
            sock.sendall(data if size == chunk else data[:size])
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
        return Moved(nbytes, time.perf_counter() - start)


def sync_program(via: str, port: int, down: bool, chunk: int, nbytes: int) -> Moved:
    # No timeout on the socket, as most programs leave it: the alarm bounds the run.
    if via == "arca":
        with arca_control.sync.open_session() as session:
            return sync_transfer(session.create_connection((HOST, port)), down, chunk, nbytes)
    return sync_transfer(socket.create_connection((HOST, port)), down, chunk, nbytes)


def main(argv: list[str]) -> None:
    alarm = int(argv[0])
    signal.alarm(alarm)
    api, direction, chunk, via, port, nbytes = argv[1], argv[2], int(argv[3]), argv[4], int(argv[5]), int(argv[6])
    if direction not in ("down", "up") or via not in ("direct", "arca"):
        sys.exit(f"guest: bad direction {direction!r} or way {via!r}")
    down = direction == "down"
    if api == "trio":
        moved = trio.run(trio_program, via, port, down, chunk, nbytes)
    elif api == "aio":
        moved = asyncio.run(aio_program(via, port, down, chunk, nbytes))
    elif api == "sync":
        moved = sync_program(via, port, down, chunk, nbytes)
    else:
        sys.exit(f"guest: unknown API {api!r}")
    print(moved, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
