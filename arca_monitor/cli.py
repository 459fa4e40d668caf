"""The ``arca-monitor`` command: options, logging, limits, and which server to run."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import functools
import logging
import resource
import signal
import socket
import sys
from typing import TYPE_CHECKING

import trio

from . import publish_spec
from .audit import AuditLog
from .config import Config, option_name
from .policy import Default, Kind, Policy
from .publish import Published
from .resolver import Resolver
from .sandbox.monitor import serve_sandboxed
from .server import bind_path, serve_fd, serve_path

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger("arca_monitor")

def parser() -> argparse.ArgumentParser:
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
        "--sandbox-fd", type=int, metavar="N",
        help="with --socket: also serve the sandbox whose init holds the other end of channel fd N (arca-run's)",
    )
    p.add_argument(
        "--publish-fd", action="append", default=[], metavar="N:GUEST_PORT", type=_publish_fd,
        help="with --sandbox-fd: relay each connection accepted on inherited listening socket fd N to GUEST_PORT "
             "on the sandbox's loopback (arca-run's, for its --publish); may be repeated",
    )
    for f in dataclasses.fields(Config):
        default = f.default
        p.add_argument(
            f"--{option_name(f.name)}", type=type(default), default=default,
            metavar="SECONDS" if isinstance(default, float) else "N",
            help=f"{f.metadata['help']} (default: %(default)s)",
        )
    p.add_argument(
        "--hosts-file", default="/etc/hosts", metavar="PATH",
        help="the hosts file Resolve reads first (default: %(default)s)",
    )
    p.add_argument(
        "--resolver", metavar="HOST:PORT", type=_nameserver,
        help="the DNS server Resolve asks (an IP literal; [v6]:port for IPv6); default: /etc/resolv.conf's",
    )
    p.add_argument(
        "--no-dns", action="store_true",
        help="resolve from the hosts file (and IP literals) only: no DNS query leaves the monitor",
    )
    rules = p.add_argument_group(
        "policy",
        "Everything no rule allows is denied. A rule is ADDR[/PREFIX][:PORTS]: ADDR an IPv4 address, an "
        "IPv6 address in brackets ([::1]), a host name or *.domain; PORTS a port, A-B or * (* and no PORTS "
        "mean 1024-65535: privileged ports must be named). Each flag may be repeated. With no rule at all, "
        "--default-policy applies.",
    )
    rules.add_argument(
        "--default-policy", choices=[d.value for d in Default], default=Default.LOOPBACK.value,
        help="what applies when no rule is given at all: loopback (a bare arca-monitor's and open_session()'s: "
             "connect to loopback, any port; listen and UDP on loopback and the wildcards, ports 1024 and up; "
             "resolve from the hosts file only) or none (arca-run's: nothing outside the sandbox, names from the "
             "hosts file only) (default: %(default)s)",
    )
    for kind, what in (
        ("listen", "addresses and ports to listen on (the address bound: [::] is the IPv6 wildcard)"),
        ("connect", "where connects may go (a host name allows what the monitor resolved for it)"),
        ("udp", "addresses and ports to bind UDP sockets on"),
        ("resolve", "NAME-PATTERN: names that may be looked up (names connect rules allow may be too)"),
        ("peer", "CIDR: where accepted connections may come from (default: anywhere)"),
        ("unix", "DIR: where AF_UNIX sockets may be listened on or connected to"),
    ):
        rules.add_argument(f"--allow-{kind}", action="append", default=[], metavar="RULE", help=what)
    rules.add_argument("--policy", metavar="FILE",
                       help='rules from a TOML file: connect = ["api.example.test:443"], listen = [...], ...')
    p.add_argument(
        "--audit-log", metavar="FILE",
        help="append the audit log (JSON lines: every request and decision, every connection's life) to FILE, "
             "or - for stderr; never stdout",
    )
    p.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: %(default)s)",
    )
    return p


def _nameserver(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host.strip("[]"), int(port)


def _publish_fd(text: str) -> tuple[int, int]:
    try:
        return publish_spec.parse_fd_option(text)
    except publish_spec.PublishError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _published(options: list[tuple[int, int]]) -> list[Published]:
    """The listening sockets ``--publish-fd`` names; OSError if one is not a listening TCP socket."""
    published = []
    for fd, guest_port in options:
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1:
            sock.close()
            raise OSError(errno.EINVAL, f"--publish-fd {fd}: not a listening TCP socket")
        published.append(Published(sock, guest_port))
    return published


def raise_fd_limit() -> None:
    """Every connection costs three fds (the TCP socket, the rx pipe's write end, the tx socket's read end): allow as many as the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _until_signalled(serve: Callable[[], Awaitable[None]]) -> None:
    """Run ``serve`` until SIGTERM or SIGINT, then close every session and exit 0."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            nursery.start_soon(serve)
            async for signum in signals:
                log.info("%s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    except ValueError as exc:
        parser().error(str(exc))
    if args.sandbox_fd is not None and args.socket is None:
        parser().error("--sandbox-fd needs --socket")
    if args.publish_fd and args.sandbox_fd is None:
        parser().error("--publish-fd needs --sandbox-fd")
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="arca-monitor[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    raise_fd_limit()
    with contextlib.ExitStack() as owned:
        try:
            given = {kind: getattr(args, f"allow_{kind.value}") for kind in Kind}
            if args.policy:
                given = Policy.from_toml(args.policy, given)
            policy = Policy.build(given, Default(args.default_policy))
            resolver = Resolver(hosts_file=args.hosts_file, nameserver=args.resolver,
                                dns=not args.no_dns and policy.dns_allowed)
            audit = owned.enter_context(AuditLog.to(args.audit_log))
        except (ValueError, OSError) as exc:
            parser().error(str(exc))
        return _serve(args, config, policy, resolver, audit)


def _serve(args: argparse.Namespace, config: Config, policy: Policy, resolver: Resolver, audit: AuditLog) -> int:
    """Serve as the arguments say, until done (--fd) or signalled (--socket); the exit status."""
    bound = None
    if args.fd is None:
        # Bound before anything runs, so that a path already taken (EEXIST: not a
        # socket; EADDRINUSE: another monitor serves it) is one line and status 1.
        try:
            bound = bind_path(args.socket)
        except OSError as exc:
            log.error("--socket %s: %s (%s)", args.socket, exc.strerror or exc, errno.errorcode.get(exc.errno or 0, "?"))
            return 1
    try:
        if args.fd is not None:
            trio.run(serve_fd, args.fd, config, resolver, policy, audit)
        elif args.sandbox_fd is not None:
            sandboxed = functools.partial(
                serve_sandboxed, args.sandbox_fd, args.socket, config, resolver, policy, audit, bound=bound,
                published=_published(args.publish_fd),
            )
            trio.run(_until_signalled, sandboxed)
        else:
            serve = functools.partial(serve_path, args.socket, config, resolver, policy, audit, bound=bound)
            trio.run(_until_signalled, serve)
    except KeyboardInterrupt:
        log.info("interrupted")
    except OSError as exc:
        log.error("%s", exc)
        return 1
    return 0
