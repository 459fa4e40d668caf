"""The ``arca-monitor`` command: options, logging, limits, and which server to run."""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import sys

import trio

from .config import Config
from .server import serve_fd, serve_path

log = logging.getLogger("arca_monitor")

#: Room for every request of this version, with space to spare for later ones.
MIN_PAYLOAD = 64


def parser() -> argparse.ArgumentParser:
    defaults = Config()
    p = argparse.ArgumentParser(
        prog="arca-monitor",
        description=(
            "The arca host monitor: real TCP networking for a guest that has none, over one "
            "AF_UNIX SOCK_SEQPACKET control channel (see PROTOCOL.md). Logs go to stderr only."
        ),
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--fd", type=int, metavar="N",
        help="serve one session on inherited control channel fd N, then exit 0 (how open_session() runs it)",
    )
    where.add_argument(
        "--socket", metavar="PATH",
        help="listen on a SEQPACKET socket at PATH (mode 0600) and serve one session per guest that connects",
    )
    p.add_argument(
        "--connect-timeout", type=float, default=defaults.connect_timeout, metavar="SECONDS",
        help="how long a Connect may take when the request names no timeout (default: %(default)s)",
    )
    p.add_argument(
        "--max-payload", type=int, default=defaults.max_payload, metavar="BYTES",
        help=f"largest control frame payload accepted (default: %(default)s, {MIN_PAYLOAD} to 65535)",
    )
    p.add_argument(
        "--max-protocol-errors", type=int, default=defaults.max_protocol_errors, metavar="N",
        help="bad frames after which a session is closed (default: %(default)s)",
    )
    p.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: %(default)s)",
    )
    return p


def raise_fd_limit() -> None:
    """Every connection costs a socket and two pipe ends: allow as many as the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _until_signalled(serve, *args) -> None:
    """Run ``serve`` until SIGTERM or SIGINT, then close every session and exit 0."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            nursery.start_soon(serve, *args)
            async for signum in signals:
                log.info("%s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not MIN_PAYLOAD <= args.max_payload <= 0xFFFF:
        parser().error(f"--max-payload must be between {MIN_PAYLOAD} and 65535")
    if args.max_protocol_errors < 1:
        parser().error("--max-protocol-errors must be at least 1")
    if args.connect_timeout <= 0:
        parser().error("--connect-timeout must be positive")
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="arca-monitor[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    raise_fd_limit()
    config = Config(
        connect_timeout=args.connect_timeout,
        max_payload=args.max_payload,
        max_protocol_errors=args.max_protocol_errors,
    )
    try:
        if args.fd is not None:
            trio.run(serve_fd, args.fd, config)
        else:
            trio.run(_until_signalled, serve_path, args.socket, config)
    except KeyboardInterrupt:
        log.info("interrupted")
    except OSError as exc:
        log.error("%s", exc)
        return 1
    return 0
