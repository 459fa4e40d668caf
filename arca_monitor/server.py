"""Where sessions come from: an inherited control channel fd, a listening socket path, or a doorbell.

A doorbell (arca-run's sandbox, ``launch.MONITOR_FD_ENV``) is a connected
SEQPACKET socket on which guests send, each in one message, one end of a
socketpair they made: the monitor serves a session on each end it receives,
so guests that may not create AF_UNIX sockets still open sessions.

Resource handling: each accepted control connection becomes one session task,
which owns the connection. Error handling: a session can only end, never
raise, so one guest cannot take down the monitor or another guest's session.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import stat
from typing import TYPE_CHECKING

import trio

from .session import MonitorSession

if TYPE_CHECKING:
    from .audit import AuditLog
    from .config import Config
    from .policy import Policy
    from .resolver import Resolver

log = logging.getLogger("arca_monitor.server")


async def serve_fd(fd: int, config: Config, resolver: Resolver, policy: Policy, audit: AuditLog) -> None:
    """Serve the one session on an inherited SEQPACKET fd; return when it ends."""
    sock = socket.socket(fileno=fd)
    await MonitorSession(sock, config, resolver, policy, audit).run()


def bind_path(path: str) -> socket.socket:
    """A listening SEQPACKET socket at ``path``, replacing only a stale socket file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # nobody is serving it: a leftover from a dead monitor
        else:
            raise OSError(errno.EADDRINUSE, f"another monitor is serving {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old_umask = os.umask(0o177)  # the socket file is the guest's only door: owner only
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(128)
    return sock


async def serve_path(
    path: str,
    config: Config,
    resolver: Resolver,
    policy: Policy,
    audit: AuditLog,
    *,
    bound: socket.socket | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one session per guest that connects to ``path``, until cancelled.

    ``bound`` is the socket :func:`bind_path` made for ``path``, if the caller bound it already.
    """
    listener = trio.socket.from_stdlib_socket(bind_path(path) if bound is None else bound)
    log.info("serving on %s", path)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:
                    # EMFILE and friends: wait a little rather than spin, like trio.serve_listeners.
                    log.error("accept on %s failed: %s", path, exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(_run_session, conn.detach(), config, resolver, policy, audit)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


#: A doorbell message carries one descriptor; room for a few more, which are closed unused.
DOORBELL_MAX_FDS = 4


async def serve_doorbell(doorbell: socket.socket, config: Config, resolver: Resolver, policy: Policy,
                         audit: AuditLog) -> None:
    """Serve a session on each socket that arrives on ``doorbell``, until every guest's end of it is closed
    (and then until those sessions end) or cancelled. The caller owns ``doorbell``.

    Whatever else arrives is dropped: a message without a descriptor, extra descriptors, a descriptor
    that is not an AF_UNIX SOCK_SEQPACKET socket.
    """
    doorbell.setblocking(False)  # the monitor's end only: the guests' end is another open file
    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(doorbell)
            try:
                data, fds, _, _ = socket.recv_fds(doorbell, 64, DOORBELL_MAX_FDS)
            except BlockingIOError:
                continue
            except OSError as exc:
                log.error("doorbell: %s", exc)
                return
            if not data and not fds and _hung_up(doorbell):
                return
            for extra in fds[1:]:
                os.close(extra)
            sock = _session_socket(fds[0]) if fds else None
            if sock is None:
                log.warning("doorbell: dropping a message without a SEQPACKET socket")
                continue
            nursery.start_soon(_run_session, sock.detach(), config, resolver, policy, audit)


def _hung_up(sock: socket.socket) -> bool:
    """Whether the peer has closed (a zero-length read is also what an empty message gives)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP | select.POLLHUP)
    return bool(poller.poll(0))


def _session_socket(fd: int) -> socket.socket | None:
    """The AF_UNIX SOCK_SEQPACKET socket on ``fd``; None (and ``fd`` closed) if it is anything else."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        sock.close()
        return None
    return sock


async def _run_session(fd: int, config: Config, resolver: Resolver, policy: Policy, audit: AuditLog) -> None:
    sock = socket.socket(fileno=fd)
    try:
        await MonitorSession(sock, config, resolver, policy, audit).run()
    except Exception as exc:  # a bug in one session must not end the others
        log.error("session failed: %r", exc)
