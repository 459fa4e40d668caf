"""Starting a sandbox (arca-run's side): which ``unshare`` works here, the init's command line, its pidfd.

:func:`isolation_prefix` probes, as arca-run always has, the namespaces this
process may make: as root, new network, PID and mount namespaces; otherwise
the same inside a new user namespace that maps this user to root. ``--fork``
makes the init PID 1 of the new PID namespace, ``--kill-child`` kills it if
``unshare`` dies, and ``--mount-proc`` gives the sandbox a /proc that shows
its own processes (so ``getpid()`` and ``/proc/self`` agree).

:class:`Pair` is the two SEQPACKET socket pairs a sandbox needs: the channel
(init to monitor) and the status socket between the init and arca-run. On
the status socket the init, its network set up and its sockets handed over,
waits for :func:`release` (arca-run sends it once the monitor is serving
``ARCA_MONITOR``, so the two start side by side), then spawns the command and
answers with a pidfd of itself (:func:`receive_pidfd`).

Error handling: :func:`isolation_prefix` returns None when nothing works;
:func:`receive_pidfd` returns None when the init ended without sending one.
Resource handling: whoever starts the init closes its copies of the init's
ends (:meth:`Pair.close_init_ends`), and of the monitor's end once the
monitor has it; the caller owns the pidfd.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass

#: What arca-run sends the init when the command may start.
GO = b"go"
NAMESPACES = ["--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
USER_NAMESPACE = ["--user", "--map-root-user"]


def isolation_prefix() -> list[str] | None:
    """The command prefix that runs a program in new namespaces, or None if none works."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ([unshare, *NAMESPACES, "--"], [unshare, *USER_NAMESPACE, *NAMESPACES, "--"]):
        probe = subprocess.run([*prefix, "true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if probe.returncode == 0:
            return prefix
    return None


@dataclass(frozen=True)
class Pair:
    """The sockets between a sandbox's init, its monitor and arca-run."""

    monitor_end: socket.socket
    init_channel: socket.socket
    status: socket.socket
    init_status: socket.socket

    @classmethod
    def open(cls) -> Pair:
        monitor_end, init_channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        status, init_status = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(monitor_end, init_channel, status, init_status)

    def init_fds(self) -> tuple[int, int]:
        return self.init_channel.fileno(), self.init_status.fileno()

    def close_init_ends(self) -> None:
        """Close this process's copies of the init's ends once it is started, so that EOF means it ended."""
        self.init_channel.close()
        self.init_status.close()

    def close(self) -> None:
        for sock in (self.monitor_end, self.init_channel, self.init_status, self.status):
            sock.close()


def init_command(prefix: list[str], pair: Pair, command: list[str], python: str = sys.executable, *,
                 allow_unix_sockets: bool = False) -> list[str]:
    """The command line that starts the init with ``python`` (pass it ``pair.init_fds()``); the command is
    started without the seccomp filter only if ``allow_unix_sockets``."""
    # Imported here, not at the top: the init imports this module, and must not load arca_control.
    from arca_control.protocol.launch import MONITOR_FD_ENV

    channel_fd, status_fd = pair.init_fds()
    unix = ["--allow-unix-sockets"] if allow_unix_sockets else []
    return [*prefix, python, "-m", "arca_monitor.sandbox.init",
            "--channel-fd", str(channel_fd), "--status-fd", str(status_fd), "--doorbell-env", MONITOR_FD_ENV,
            *unix, "--", *command]


def release(status: socket.socket) -> None:
    """Let the init start the command (if it is still there to hear it)."""
    with contextlib.suppress(OSError):
        status.send(GO)


def receive_pidfd(status: socket.socket) -> int | None:
    """The init's pidfd, once it has spawned the command; None if it ended first."""
    try:
        data, fds, _, _ = socket.recv_fds(status, 16, 1)
    except OSError:
        return None
    if fds and data == b"pidfd":
        return fds[0]
    for fd in fds:
        socket.close(fd)
    return None
