"""Where sessions come from: an inherited control channel fd, or a listening socket path.

Resource handling: each accepted control connection becomes one session task,
which owns the connection. Error handling: a session can only end, never
raise, so one guest cannot take down the monitor or another guest's session.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
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


async def _run_session(fd: int, config: Config, resolver: Resolver, policy: Policy, audit: AuditLog) -> None:
    sock = socket.socket(fileno=fd)
    try:
        await MonitorSession(sock, config, resolver, policy, audit).run()
    except Exception as exc:  # a bug in one session must not end the others
        log.error("session failed: %r", exc)
