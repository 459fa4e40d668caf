"""``arca-cat``: a netcat-like guest that pipes stdin and stdout through the monitor.

    arca-cat connect HOST PORT          # a TCP connection out (HOST may be a name)
    arca-cat listen HOST PORT           # accept one connection (PORT 0: printed on stderr)
    arca-cat --unix connect PATH        # AF_UNIX stream sockets instead
    arca-cat --udp connect HOST PORT    # datagrams: one per read of stdin

TCP and AF_UNIX are half-closed as a pipeline expects: EOF on stdin sends EOF to
the peer, and the peer's EOF ends stdout; arca-cat exits when both are done.
With --udp there is no EOF on the wire: arca-cat sends until stdin ends, then
prints what still arrives for ``--wait`` seconds, and exits.

Only stderr carries messages: stdout is the connection's data.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from typing import TYPE_CHECKING

import trio

from . import open_session

if TYPE_CHECKING:
    from .datagram import ArcaDatagramSocket
    from .stream import ArcaStream

CHUNK = 1 << 16

#: Exit statuses, so that a script can tell why a run failed.
OK, FAILED, USAGE, REFUSED, DENIED, UNREACHABLE = 0, 1, 2, 3, 4, 5
STATUS_BY_ERRNO = {
    errno.ECONNREFUSED: REFUSED,
    errno.EACCES: DENIED,
    errno.EPERM: DENIED,
    errno.ENETUNREACH: UNREACHABLE,
    errno.EHOSTUNREACH: UNREACHABLE,
    errno.ETIMEDOUT: UNREACHABLE,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="arca-cat",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "exit status: 0 done, 1 other failure, 2 usage, 3 refused, 4 denied (EACCES/EPERM), "
            "5 unreachable or timed out; a name that does not resolve is 1"
        ),
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--udp", action="store_true", help="UDP datagrams instead of a TCP stream")
    kind.add_argument("--unix", action="store_true", help="an AF_UNIX stream socket: give a PATH, not HOST PORT")
    p.add_argument("--wait", type=float, default=1.0, metavar="SECONDS",
                   help="with --udp: how long to keep printing replies after stdin ends (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="connect timeout")
    p.add_argument("--monitor-arg", action="append", default=[], metavar="ARG",
                   help="an option for the monitor arca-cat spawns (repeat for each word)")
    p.add_argument("mode", choices=["connect", "listen"])
    p.add_argument("address", nargs="+", metavar="HOST PORT | PATH")
    return p


async def _read_stdin() -> bytes:
    # A blocked read of a terminal or pipe cannot be interrupted: let it go when cancelled.
    return await trio.to_thread.run_sync(os.read, 0, CHUNK, abandon_on_cancel=True)


async def _write_stdout(data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = await trio.to_thread.run_sync(os.write, 1, view)
        view = view[written:]


async def pipe_stream(stream: ArcaStream) -> None:
    """stdin -> stream (then EOF), stream -> stdout, until both directions are done."""

    async def upstream() -> None:
        while data := await _read_stdin():
            await stream.send_all(data)
        await stream.send_eof()

    async def downstream() -> None:
        while data := await stream.receive_some(CHUNK):
            await _write_stdout(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(upstream)
        nursery.start_soon(downstream)
    await stream.aclose()


async def pipe_datagrams(sock: ArcaDatagramSocket, wait: float) -> None:
    """stdin -> datagrams to the peer; datagrams from it -> stdout, until stdin ends and ``wait`` passes."""
    async with trio.open_nursery() as nursery:

        async def downstream() -> None:
            while True:
                await _write_stdout(await sock.recv())

        nursery.start_soon(downstream)
        while data := await _read_stdin():
            await sock.send(data)
        await trio.sleep(wait)
        nursery.cancel_scope.cancel()
    await sock.aclose()


def _say(text: str) -> None:
    print(f"arca-cat: {text}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    async with open_session(*args.monitor_arg) as session:
        if args.unix:
            (path,) = args.address
            if args.mode == "connect":
                await pipe_stream(await session.connect_unix(path, timeout=args.timeout))
            else:
                listener = await session.listen_unix(path)
                _say(f"listening on {path}")
                await pipe_stream(await listener.accept())
                await listener.aclose()
            return OK
        host, port = args.address[0], int(args.address[1])
        if args.udp:
            if args.mode == "connect":
                (family, _, target), *_ = await session.resolve(host, port, type=socket.SOCK_DGRAM)
                sock = await session.udp_bind("::" if family == socket.AF_INET6 else "0.0.0.0", 0)
                sock.connect(*target)
            else:
                sock = await session.udp_bind(host, port)
                _say(f"listening on {sock.local.host} port {sock.local.port}")
                _, peer = await sock.recvfrom()  # the first sender becomes the peer
                sock.connect(*peer)
            await pipe_datagrams(sock, args.wait)
            return OK
        if args.mode == "connect":
            stream = await session.connect(host, port, timeout=args.timeout)
        else:
            listener = await session.listen(host, port)
            _say(f"listening on {listener.local.host} port {listener.local.port}")
            stream = await listener.accept()
            await listener.aclose()
            _say(f"connection from {stream.peer.host} port {stream.peer.port}")
        await pipe_stream(stream)
        return OK


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if len(args.address) != (1 if args.unix else 2) or (not args.unix and not args.address[1].isdigit()):
        parser().error("give HOST PORT (or PATH with --unix)")
    try:
        return trio.run(run, args)
    except socket.gaierror as exc:
        _say(f"cannot resolve {args.address[0]}: {exc.strerror}")
        return FAILED
    except OSError as exc:
        _say(str(exc))
        return STATUS_BY_ERRNO.get(exc.errno, FAILED) if exc.errno is not None else FAILED
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        _say(f"connection failed: {exc}")
        return FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
