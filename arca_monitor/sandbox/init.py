"""The sandbox's PID 1: sets up its network, hands the monitor its sockets, runs the command, reaps.

    python -m arca_monitor.sandbox.init --channel-fd N --status-fd M --doorbell-env NAME \
        [--allow-unix-sockets] -- CMD [ARGS...]

arca-run starts it through ``unshare`` in new network, PID and mount
namespaces. In order, it:

1. sets up the network (:mod:`.netsetup`); if that fails it says why and exits
   126 without running CMD;
2. hands every socket to the monitor on channel fd N (one Handoff each, then
   Ready), and closes its own copies; one of them is the monitor's end of the
   doorbell, a SEQPACKET socketpair whose other end CMD inherits (its number
   in the variable NAME, ``ARCA_MONITOR_FD``): how CMD's processes open sessions;
3. waits for arca-run's go on status fd M (the monitor is serving then), starts
   CMD with its own environment (the rest comes from arca-run) and, unless
   ``--allow-unix-sockets``, the seccomp filter that refuses new AF_UNIX
   sockets (:func:`arca_monitor.seccomp.install_supervised`, installed in
   CMD's process between fork and exec: the init itself keeps its channels;
   that process sends the filter's listener to the monitor on fd N, a
   :class:`~.messages.Supervise`, before it execs), and answers with a
   pidfd of itself, so that arca-run can forward signals across the PID
   namespace;
4. serves: ConnectInside requests from the monitor (:mod:`.inside`);
   SIGINT and SIGTERM, forwarded to CMD; SIGCHLD, for which it reaps every
   child, orphans included (as PID 1, they are all its own);
5. exits with CMD's status (128 + N if signal N ended it) as soon as CMD has
   exited. The kernel then kills every other process in the PID namespace.

Signals wake the loop through ``signal.set_wakeup_fd``: no busy-waiting, no
threads. Resource handling: every descriptor the init holds is close-on-exec,
so CMD inherits only its standard streams and the doorbell (whose copy the
init closes once CMD is started). Error handling: a monitor that goes
away (EOF, EPIPE) only ends ConnectInside service; CMD runs on, and its
connections out find no listener (the monitor held them), so they are refused.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import selectors
import signal
import socket
import sys
from typing import TYPE_CHECKING

from .. import seccomp
from . import CANNOT_ISOLATE, messages, netsetup
from .inside import Connector, Outcome
from .launch import GO

if TYPE_CHECKING:
    from types import FrameType

FORWARDED = (signal.SIGINT, signal.SIGTERM)
#: Dispositions Python changes at startup (SIG_IGN) that CMD must not inherit.
RESET_FOR_COMMAND = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, *FORWARDED)


def say(message: str) -> None:
    print(f"arca-run: {message}", file=sys.stderr, flush=True)


def exit_status(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def hand_over(channel: socket.socket, sockets: netsetup.Sockets, doorbell: socket.socket) -> None:
    """Every socket to the monitor, the monitor's end of the ``doorbell`` too, then Ready. Raises OSError if the
    monitor is gone."""
    for role, sock in (*sockets.by_role().items(), (messages.Role.DOORBELL, doorbell)):
        socket.send_fds(channel, [messages.encode(messages.Handoff(role))], [sock.fileno()])
    channel.sendall(messages.encode(messages.Ready()))


def send_pidfd(status: socket.socket) -> None:
    """A pidfd of this process to arca-run, which cannot name it by pid across the PID namespace."""
    try:
        pidfd = os.pidfd_open(os.getpid())
        try:
            socket.send_fds(status, [b"pidfd"], [pidfd])
        finally:
            os.close(pidfd)
    except OSError as exc:  # arca-run is gone, or the kernel has no pidfds: signals cannot be forwarded
        say(f"cannot give arca-run a pidfd ({exc}): signals sent to arca-run will not reach the command")
    finally:
        status.close()


class Init:
    """The loop of step 4, until the command exits."""

    def __init__(self, channel: socket.socket) -> None:
        #: Set once the command is spawned; until then signals wait in the wakeup fd.
        self.command_pid = 0
        self.channel: socket.socket | None = channel
        self.selector = selectors.DefaultSelector()
        self.wakeup, self._wakeup_w = socket.socketpair()
        for end in (self.wakeup, self._wakeup_w):
            end.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGCHLD, *FORWARDED):
            signal.signal(signum, _ignore)
        self.selector.register(self.wakeup, selectors.EVENT_READ)
        self.selector.register(channel, selectors.EVENT_READ)
        self.connector = Connector(self.selector)

    def run(self) -> int:
        """Serve until the command exits; its exit status."""
        try:
            while True:
                for key, _ in self.selector.select(self.connector.timeout()):
                    if key.fileobj is self.wakeup:
                        status = self.signalled()
                        if status is not None:
                            return status
                    elif key.fileobj is self.channel:
                        self.request()
                    elif key.data is self.connector:
                        self.reply(self.connector.writable(key.fd))
                for outcome in self.connector.expired():
                    self.reply(outcome)
        finally:
            self.connector.close()
            self.selector.close()

    def signalled(self) -> int | None:
        """Act on the signals that woke us: forward, reap. The command's status once it has exited."""
        try:
            signums = self.wakeup.recv(256)
        except BlockingIOError:
            signums = b""
        for signum in set(signums):
            if signum in FORWARDED and self.command_pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.command_pid, signum)
        # Reap after every wakeup, not only SIGCHLD: signals of one kind merge, and reaping is cheap.
        return self.reap()

    def reap(self) -> int | None:
        status = None
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return status
            if pid == 0:
                return status
            if pid == self.command_pid:
                status = exit_status(wait_status)

    def request(self) -> None:
        assert self.channel is not None
        try:
            data, fds, _, _ = socket.recv_fds(self.channel, messages.MAX_FRAME, 1)
        except OSError:
            data, fds = b"", []
        for fd in fds:  # the monitor sends none; never keep what arrives anyway
            os.close(fd)
        if not data:
            self.monitor_gone()
            return
        try:
            message = messages.decode(data)
        except messages.MessageError as exc:
            say(f"sandbox: ignoring a bad request from the monitor: {exc}")
            return
        if not isinstance(message, messages.ConnectInside):
            say(f"sandbox: ignoring {type(message).__name__} from the monitor")
            return
        self.reply(self.connector.start(message))

    def reply(self, outcome: Outcome | None) -> None:
        if outcome is None:
            return
        try:
            if self.channel is not None:
                data = messages.encode(outcome.reply)
                if outcome.sock is None:
                    self.channel.sendall(data)
                else:
                    socket.send_fds(self.channel, [data], [outcome.sock.fileno()])
        except OSError:
            self.monitor_gone()
        finally:
            if outcome.sock is not None:
                outcome.sock.close()

    def monitor_gone(self) -> None:
        if self.channel is not None:
            self.selector.unregister(self.channel)
            self.channel.close()
            self.channel = None
        self.connector.close()


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A Python handler, so the C handler writes the signal number to the wakeup fd."""


def spawn(command: list[str], doorbell: socket.socket, doorbell_env: str, supervisor: socket.socket | None) -> int:
    """Start ``command`` with the ``doorbell`` (its number in ``doorbell_env``) and, given a ``supervisor``
    channel, the seccomp filter, whose listener goes to the monitor on that channel; its pid.

    OSError with the errno if it could not be exec'd, or the filter installed, or its listener
    sent (then the command never runs). fork, not posix_spawn: the filter must be installed in
    the command's process, before exec, and not in the init. A close-on-exec pipe carries the
    child's errno back, so that a failed exec is reported as posix_spawn reports it.
    """
    env = {**os.environ, doorbell_env: str(doorbell.fileno())}
    report, reporter = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe-ish steps, then exec or _exit
        code = errno.EIO
        try:
            os.close(report)
            signal.set_wakeup_fd(-1)
            for signum in RESET_FOR_COMMAND:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            doorbell.set_inheritable(True)
            if supervisor is not None:
                listener = seccomp.install_supervised()
                socket.send_fds(supervisor, [messages.encode(messages.Supervise())], [listener])
                os.close(listener)  # the monitor's now (close-on-exec anyway)
            os.execvpe(command[0], command, env)
        except OSError as exc:
            code = exc.errno or errno.EIO
        finally:
            with contextlib.suppress(OSError):
                os.write(reporter, code.to_bytes(2, "little"))
            os._exit(127)
    os.close(reporter)
    try:
        failed = os.read(report, 2)
    finally:
        os.close(report)
    if failed:
        os.waitpid(pid, 0)
        code = int.from_bytes(failed, "little")
        raise OSError(code, os.strerror(code))
    return pid


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="arca_monitor.sandbox.init", description="the sandbox's PID 1 (arca-run's)")
    p.add_argument("--channel-fd", type=int, required=True, help="SEQPACKET channel to the monitor")
    p.add_argument("--status-fd", type=int, required=True, help="SEQPACKET socket to arca-run, for the pidfd")
    # arca-run names the variable: the init imports nothing of arca_control (whose launch.py has it).
    p.add_argument("--doorbell-env", required=True, metavar="NAME",
                   help="the environment variable that gives the command the doorbell's descriptor number")
    p.add_argument("--allow-unix-sockets", action="store_true",
                   help="no seccomp filter: the command may create AF_UNIX sockets (see arca-run --help)")
    p.add_argument("command", nargs="+", help="the command and its arguments (after --)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    channel = socket.socket(fileno=args.channel_fd)
    status = socket.socket(fileno=args.status_fd)
    for sock in (channel, status):
        sock.set_inheritable(False)
    try:
        sockets = netsetup.set_up()
    except netsetup.SetupError as exc:
        say(f"cannot set up the sandbox's network: {exc}; not running the command")
        return CANNOT_ISOLATE
    monitor_doorbell, doorbell = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        hand_over(channel, sockets, monitor_doorbell)
    except OSError as exc:
        say(f"cannot hand the sandbox's sockets to the monitor ({exc}); not running the command")
        return CANNOT_ISOLATE
    finally:
        sockets.close()
        monitor_doorbell.close()
    init = Init(channel)  # signals from here on are caught, and wait in the wakeup fd
    try:
        go = status.recv(len(GO))
    except OSError:
        go = b""
    if go != GO:
        say("arca-run went away before the command could start; not running it")
        return CANNOT_ISOLATE
    try:
        supervisor = None if args.allow_unix_sockets else channel
        init.command_pid = spawn(args.command, doorbell, args.doorbell_env, supervisor)
    except OSError as exc:
        say(f"{args.command[0]}: {exc.strerror}")
        return 127 if exc.errno == errno.ENOENT else 126
    finally:
        doorbell.close()  # the command's now: the monitor sees EOF once none of its processes holds it
    send_pidfd(status)
    return init.run()


if __name__ == "__main__":
    sys.exit(main())
