"""``arca-run``: run a command in a sandbox whose only way out is a monitor.

    arca-run [--transparent] [monitor options] -- CMD [ARGS...]

The monitor runs here, in the host's network namespace, serving a socket path in
a private directory. CMD runs in a sandbox (``arca_monitor.sandbox``): new
network, PID and mount namespaces, whose PID 1 is the sandbox's init. There
``lo`` is up, and 127.0.0.1 and ::1 are the sandbox's own, as in a container;
every TCP connection to anywhere else, every DNS query and every other UDP
datagram goes to sockets the init made and handed to the monitor. Nothing can
leave: the namespace has no interface but ``lo``. ``ARCA_MONITOR`` in CMD's
environment names the monitor's path: every ``arca_control.open_session()``
inside attaches to this monitor instead of spawning one.

With ``--transparent`` a Python CMD needs no change at all: its interpreter
calls ``arca_control.install()`` at startup (through a ``sitecustomize`` put
on ``PYTHONPATH``), so ``urllib``, ``http.client``, ``socket.create_connection``
and friends go through the monitor (limits in ``arca_control/transparent.py``).
An interpreter started with ``-I``, ``-E`` or ``-S`` skips that hook.

CMD's exit status becomes arca-run's (128 + N if a signal N ended it). SIGINT and
SIGTERM are forwarded to CMD (through the init, by its pidfd). When CMD exits,
every process it started ends too (the init exits, and the kernel ends its PID
namespace), and the monitor is shut down, which closes every socket it opened.
If no namespace can be made (no root and no user namespaces), or the sandbox's
network cannot be set up, arca-run says so and exits 126: it never runs CMD
with the host's network.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import TYPE_CHECKING

from arca_control.protocol import launch

from .sandbox import CANNOT_ISOLATE
from .sandbox.launch import Pair, init_command, isolation_prefix, receive_pidfd, release

if TYPE_CHECKING:
    import socket
    from types import FrameType

__all__ = ["CANNOT_ISOLATE", "isolation_prefix", "main"]

MONITOR_START_TIMEOUT = 10.0
FORWARDED = (signal.SIGINT, signal.SIGTERM)


def usage() -> str:
    return (
        "usage: arca-run [--transparent] [monitor options] -- CMD [ARGS...]\n"
        "Runs CMD in a sandbox (its own loopback and PID namespace) whose only way out\n"
        "is an arca monitor (ARCA_MONITOR in its environment). Monitor options are\n"
        "arca-monitor's (see arca-monitor --help), except --fd, --socket and\n"
        "--sandbox-fd, which arca-run sets.\n"
        "--transparent: a Python CMD's sockets and name lookups go through the monitor\n"
        "unchanged (arca_control.install() at its startup)."
    )


def start_monitor(path: str, options: list[str], sandbox: socket.socket) -> subprocess.Popen[bytes]:
    """The monitor, to serve ``path`` and the sandbox on channel ``sandbox`` (see :func:`wait_for_monitor`)."""
    fd = sandbox.fileno()
    return subprocess.Popen([sys.executable, "-m", "arca_monitor", "--socket", path, "--sandbox-fd", str(fd),
                             *options], pass_fds=(fd,))


def wait_for_monitor(monitor: subprocess.Popen[bytes], path: str) -> None:
    """Return once the monitor serves ``path``; RuntimeError if it ended or took too long."""
    deadline = time.monotonic() + MONITOR_START_TIMEOUT
    while not os.path.exists(path):
        if monitor.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the monitor did not start (see its messages above)")
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print(usage(), file=sys.stderr)
        return 2
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    transparent = "--transparent" in options
    options = [opt for opt in options if opt != "--transparent"]
    if any(opt in ("-h", "--help") for opt in options):
        print(usage())
        return 0
    if any(opt.startswith(("--fd", "--socket", "--sandbox-fd")) for opt in options):
        print("arca-run: --fd, --socket and --sandbox-fd are arca-run's to set", file=sys.stderr)
        return 2
    prefix = isolation_prefix()
    if prefix is None:
        print("arca-run: cannot make a network namespace (needs root or user namespaces, and unshare);"
              " not running the command with the host's network", file=sys.stderr)
        return CANNOT_ISOLATE
    with tempfile.TemporaryDirectory(prefix="arca-run-") as workdir, contextlib.closing(Pair.open()) as pair:
        os.chmod(workdir, 0o700)
        path = os.path.join(workdir, "monitor.sock")
        monitor = start_monitor(path, options, pair.monitor_end)
        pair.monitor_end.close()  # the monitor's now: it sees EOF when the init ends
        try:
            return run_guest(prefix, command, path, pair, monitor, transparent)
        finally:
            monitor.send_signal(signal.SIGTERM)  # a clean shutdown: every session and socket closed
            try:
                monitor.wait(timeout=10)
            except subprocess.TimeoutExpired:
                monitor.kill()
                monitor.wait()


def transparent_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a Python guest that installs transparent mode at startup."""
    paths = sysconfig.get_paths()
    sites = dict.fromkeys([launch.package_root(), paths["purelib"], paths["platlib"]])
    return {
        **env,
        launch.TRANSPARENT_ENV: "1",
        launch.SITE_ENV: os.pathsep.join(sites),
        "PYTHONPATH": os.pathsep.join(filter(None, [launch.site_hook_dir(), env.get("PYTHONPATH", "")])),
    }


class Forwarder:
    """SIGINT and SIGTERM for the sandbox's init (which forwards them to CMD), held until its pidfd arrives.

    The init is PID 1 of its own PID namespace, a child of ``unshare``, which does
    not forward signals: only a pidfd names it from here.
    """

    def __init__(self) -> None:
        self.pidfd: int | None = None
        self.held: list[int] = []

    def forward(self, signum: int, frame: FrameType | None) -> None:
        if self.pidfd is None:
            self.held.append(signum)
        else:
            self.send(signum)

    def attach(self, pidfd: int) -> None:
        self.pidfd = pidfd
        while self.held:
            self.send(self.held.pop(0))

    def send(self, signum: int) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signum)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def run_guest(prefix: list[str], command: list[str], path: str, pair: Pair, monitor: subprocess.Popen[bytes],
              transparent: bool = False) -> int:
    """Run CMD in the sandbox (``monitor`` holds the channel's other end); its exit status.

    The sandbox sets itself up while the monitor starts; CMD starts once the monitor serves ``path``.
    """
    env = {**os.environ, launch.MONITOR_ENV: path}
    if transparent:
        env = transparent_env(env)
    try:
        guest = subprocess.Popen(init_command(prefix, pair, command), env=env, pass_fds=pair.init_fds())
    except OSError as exc:
        print(f"arca-run: {exc}", file=sys.stderr)
        return 127
    pair.close_init_ends()
    try:
        wait_for_monitor(monitor, path)
    except RuntimeError as exc:
        guest.kill()  # unshare, and with it (--kill-child) the init, before it ran CMD
        guest.wait()
        print(f"arca-run: {exc}", file=sys.stderr)
        return 1
    forwarder = Forwarder()
    previous = {signum: signal.signal(signum, forwarder.forward) for signum in FORWARDED}
    try:
        release(pair.status)
        pidfd = receive_pidfd(pair.status)
        if pidfd is not None:
            forwarder.attach(pidfd)
        status = guest.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        forwarder.close()
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main())
