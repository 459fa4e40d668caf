"""``arca-run``: run a command in a sandbox whose only way out is a monitor.

    arca-run [--publish [HOST_ADDR:]HOST_PORT:GUEST_PORT]... [monitor options] -- CMD [ARGS...]

The monitor runs here, in the host's network namespace, serving a socket path in
a private directory. CMD runs in a sandbox (``arca_monitor.sandbox``): new
network, PID and mount namespaces, whose PID 1 is the sandbox's init. There
``lo`` is up, and 127.0.0.1 and ::1 are the sandbox's own, as in a container;
every TCP connection to anywhere else, every DNS query and every other UDP
datagram goes to sockets the init made and handed to the monitor. Nothing can
leave: the namespace has no interface but ``lo``. ``ARCA_MONITOR_FD`` in CMD's
environment names an inherited descriptor, the monitor's doorbell: every
``arca_control.open_session()`` inside attaches through it to this monitor
instead of spawning one.

CMD cannot create AF_UNIX sockets (a seccomp filter: ``socket(AF_UNIX)``
fails with EACCES, and each refusal is a "seccomp" line of the audit log
and a denial; ``socketpair`` works, a datagram pair being made a seqpacket
one by the monitor: ``arca_monitor.seccomp_supervisor``), since a network
namespace does not hide the host's path sockets. ``--allow-unix-sockets``
drops the filter, and then ``ARCA_MONITOR`` names the monitor's socket path
too.

The monitor serves those sockets (``arca_monitor.sandbox_front``): each TCP
connection is decided by the policy and relayed from the host; each DNS
query is answered from the resolve rules (``host.arca.internal`` is the
host's loopback, so ``--allow-connect 127.0.0.1:8000`` lets
``curl http://host.arca.internal:8000/`` through). So every program, in any
language, needs no change. ``--transparent`` is accepted and does nothing
(it says so once on stderr): it once patched a Python CMD's socket module.

With no rule at all, arca-run allows nothing outside the sandbox (it starts
the monitor with ``--default-policy none``): no connect, no listen or UDP on
the host, and names from the hosts file only, while the sandbox's own
loopback and ``--publish`` work as ever. Every ``open_session()`` inside
attaches to the same monitor, so it gets the same rules. A bare
``arca-monitor`` and an ``open_session()`` outside keep the ``loopback``
default (``policy.Default``). ``--default-policy loopback`` asks arca-run
for that one.

``--publish [HOST_ADDR:]HOST_PORT:GUEST_PORT`` (repeatable) publishes a server
in the sandbox: arca-run listens on HOST_ADDR (default 127.0.0.1; HOST_PORT 0
lets the kernel choose) before anything starts, so that a port already taken
is one line and exit status 1, and hands the listener to the monitor, which
relays each connection to GUEST_PORT on the sandbox's own loopback
(``arca_monitor.publish``). Once the monitor serves, and before CMD starts,
arca-run prints ``published HOST_ADDR:HOSTPORT -> sandbox port GUESTPORT`` on
stderr for each.

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
import tempfile
import time
from typing import TYPE_CHECKING

from arca_control.protocol import launch

from . import publish_spec
from .sandbox import CANNOT_ISOLATE
from .sandbox.launch import Pair, init_command, isolation_prefix, receive_pidfd, release

if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence
    from types import FrameType

__all__ = ["CANNOT_ISOLATE", "isolation_prefix", "main"]

MONITOR_START_TIMEOUT = 10.0
#: The monitor's option for the default policy, and arca-run's default: nothing outside the sandbox.
DEFAULT_OPTION = "--default-policy"
RUN_DEFAULT = "none"
FORWARDED = (signal.SIGINT, signal.SIGTERM)
ALLOW_UNIX_SOCKETS = "--allow-unix-sockets"
TRANSPARENT_NOTE = ("arca-run: --transparent is no longer needed and does nothing: every program's TCP and DNS"
                    " go through the monitor")


def usage() -> str:
    return (
        "usage: arca-run [--publish [HOST_ADDR:]HOST_PORT:GUEST_PORT]... [monitor options] -- CMD [ARGS...]\n"
        "Runs CMD in a sandbox (its own loopback and PID namespace) whose only way out\n"
        "is an arca monitor (ARCA_MONITOR_FD in its environment). Monitor options are\n"
        "arca-monitor's (see arca-monitor --help), except --fd, --socket,\n"
        "--sandbox-fd and --publish-fd, which arca-run sets.\n"
        "--publish [HOST_ADDR:]HOST_PORT:GUEST_PORT: listen on the host (default address\n"
        "127.0.0.1, IPv6 in brackets; HOST_PORT 0: the kernel chooses) and relay each\n"
        "connection to GUEST_PORT on the sandbox's loopback. Repeatable.\n"
        "CMD cannot create AF_UNIX sockets (seccomp: EACCES, each refusal audited;\n"
        "socketpair works, a datagram pair being made a seqpacket one);\n"
        "sessions reach the monitor through an inherited fd (ARCA_MONITOR_FD).\n"
        "--allow-unix-sockets: no such filter. Seccomp cannot see paths, so this opens\n"
        "EVERY path socket the sandbox's user can reach on the host's file system\n"
        "(container runtimes, desktop buses, databases), not one directory; and\n"
        "ARCA_MONITOR then names the monitor's socket path too.\n"
        "Every program's TCP and DNS go through the monitor; the host's loopback is\n"
        "host.arca.internal. --transparent is accepted and does nothing.\n"
        "With no rule at all, arca-run allows nothing outside the sandbox: no connect,\n"
        "no listen or UDP on the host, names from the hosts file only (--default-policy\n"
        "none); the sandbox's own loopback and --publish work as ever. A bare\n"
        "arca-monitor and open_session() default instead to loopback: connect to\n"
        "loopback, listen and UDP on loopback and the wildcards (ports 1024 and up),\n"
        "names from the hosts file only. Allow what CMD needs, e.g.\n"
        "--allow-connect 127.0.0.1:8000 for host.arca.internal:8000; each refusal's\n"
        "audit line names the rule that would allow it."
    )


def start_monitor(path: str, options: list[str], sandbox: socket.socket,
                  published: Sequence[tuple[socket.socket, int]] = ()) -> subprocess.Popen[bytes]:
    """The monitor, to serve ``path``, the sandbox on channel ``sandbox`` and the ``published`` listeners
    (each with its guest port); see :func:`wait_for_monitor`."""
    fd = sandbox.fileno()
    publish = [arg for sock, port in published for arg in ("--publish-fd", publish_spec.fd_option(sock, port))]
    # With no rule at all, nothing outside the sandbox (unless the caller chose a default itself).
    chosen = any(opt == DEFAULT_OPTION or opt.startswith(f"{DEFAULT_OPTION}=") for opt in options)
    default = [] if chosen else [DEFAULT_OPTION, RUN_DEFAULT]
    return subprocess.Popen([sys.executable, "-m", "arca_monitor", "--socket", path, "--sandbox-fd", str(fd),
                             *publish, *default, *options], pass_fds=(fd, *(sock.fileno() for sock, _ in published)))


def split_publish(options: list[str]) -> tuple[list[str], list[publish_spec.PublishSpec]]:
    """``options`` without ``--publish SPEC`` (or ``--publish=SPEC``), and the specs; PublishError if one is bad."""
    rest: list[str] = []
    specs: list[publish_spec.PublishSpec] = []
    given = iter(options)
    for option in given:
        if option == "--publish":
            value = next(given, None)
            if value is None:
                raise publish_spec.PublishError("--publish needs [HOST_ADDR:]HOST_PORT:GUEST_PORT")
            specs.append(publish_spec.parse(value))
        elif option.startswith("--publish="):
            specs.append(publish_spec.parse(option.removeprefix("--publish=")))
        else:
            rest.append(option)
    return rest, specs


def bind_published(specs: Sequence[publish_spec.PublishSpec]) -> list[tuple[socket.socket, int]]:
    """A host listener for each of ``specs``, with its guest port; OSError naming the spec (none left open) if
    one cannot be bound."""
    published: list[tuple[socket.socket, int]] = []
    for spec in specs:
        try:
            sock = publish_spec.bind(spec)
        except OSError as exc:
            for bound, _ in published:
                bound.close()
            where = f"[{spec.host}]" if ":" in spec.host else spec.host
            raise OSError(exc.errno, f"--publish {where}:{spec.host_port}:{spec.guest_port}: "
                                     f"{exc.strerror or exc}") from None
        published.append((sock, spec.guest_port))
    return published


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
    if "--transparent" in options:
        print(TRANSPARENT_NOTE, file=sys.stderr)
        options = [opt for opt in options if opt != "--transparent"]
    allow_unix_sockets = ALLOW_UNIX_SOCKETS in options
    options = [opt for opt in options if opt != ALLOW_UNIX_SOCKETS]
    if any(opt in ("-h", "--help") for opt in options):
        print(usage())
        return 0
    if any(opt.startswith(("--fd", "--socket", "--sandbox-fd", "--publish-fd")) for opt in options):
        print("arca-run: --fd, --socket, --sandbox-fd and --publish-fd are arca-run's to set", file=sys.stderr)
        return 2
    try:
        options, specs = split_publish(options)
    except publish_spec.PublishError as exc:
        print(f"arca-run: {exc}", file=sys.stderr)
        return 2
    prefix = isolation_prefix()
    if prefix is None:
        print("arca-run: cannot make a network namespace (needs root or user namespaces, and unshare);"
              " not running the command with the host's network", file=sys.stderr)
        return CANNOT_ISOLATE
    try:
        published = bind_published(specs)
    except OSError as exc:
        print(f"arca-run: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        return run_monitored(prefix, command, options, published, allow_unix_sockets=allow_unix_sockets)
    finally:
        for sock, _ in published:
            sock.close()  # (at the latest: the monitor has its own copies from the start)


def run_monitored(prefix: list[str], command: list[str], options: list[str],
                  published: list[tuple[socket.socket, int]], *, allow_unix_sockets: bool = False) -> int:
    """Start the monitor (handing it the ``published`` listeners, closed here once it has them), run CMD, stop
    the monitor."""
    announce = [publish_spec.announcement(sock, port) for sock, port in published]
    with tempfile.TemporaryDirectory(prefix="arca-run-") as workdir, contextlib.closing(Pair.open()) as pair:
        os.chmod(workdir, 0o700)
        path = os.path.join(workdir, "monitor.sock")
        monitor = start_monitor(path, options, pair.monitor_end, published)
        pair.monitor_end.close()  # the monitor's now: it sees EOF when the init ends
        for sock, _ in published:
            sock.close()  # the monitor's now: when it ends, so do they
        try:
            return run_guest(prefix, command, path, pair, monitor, announce, allow_unix_sockets=allow_unix_sockets)
        finally:
            monitor.send_signal(signal.SIGTERM)  # a clean shutdown: every session and socket closed
            try:
                monitor.wait(timeout=10)
            except subprocess.TimeoutExpired:
                monitor.kill()
                monitor.wait()


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
              announce: Sequence[str] = (), *, allow_unix_sockets: bool = False) -> int:
    """Run CMD in the sandbox (``monitor`` holds the channel's other end); its exit status.

    The sandbox sets itself up while the monitor starts; once the monitor serves ``path``, the
    ``announce`` lines (the published ports) go to stderr, and then CMD starts.
    """
    # The path is of use only to a command that may create AF_UNIX sockets; the doorbell serves all.
    env = {key: value for key, value in os.environ.items() if key not in (launch.MONITOR_ENV, launch.MONITOR_FD_ENV)}
    if allow_unix_sockets:
        env[launch.MONITOR_ENV] = path
    argv = init_command(prefix, pair, command, allow_unix_sockets=allow_unix_sockets)
    try:
        guest = subprocess.Popen(argv, env=env, pass_fds=pair.init_fds())
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
    for line in announce:
        print(line, file=sys.stderr, flush=True)
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
