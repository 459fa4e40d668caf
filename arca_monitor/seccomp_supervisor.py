"""The monitor's answers to the sandbox's seccomp filter: refusals audited and counted, datagram pairs substituted.

arca-run's command runs under :func:`arca_monitor.seccomp.install_supervised`'s
filter, whose listener descriptor the sandbox's init hands the monitor; the
sandbox's front end runs :meth:`Supervisor.serve` on it with the sandbox's
broker (audit session 0). For each call the filter sends here:

* ``socket(AF_UNIX, ...)`` (and i386's ``socketcall(SYS_SOCKET)``, whatever
  its domain: it sits behind a pointer): fails with EACCES, as before, and is
  one "seccomp" audit line: ``call`` (what was tried, e.g.
  ``socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC)``), ``pid`` (the host's),
  ``sandbox_pid``, ``comm`` (/proc/PID/comm), ``decision`` "denied",
  ``errno``, ``reason`` (the missing rule) and ``rule``
  (``--allow-unix-sockets``); it counts as a denial (the broker's ``denials``).
* ``io_uring_setup``: fails with ENOSYS, as on a kernel without io_uring; audited
  and counted the same way.
* ``socketpair(AF_UNIX, SOCK_DGRAM or SOCK_RAW, ...)`` (and i386's
  ``socketcall(SYS_SOCKETPAIR)``, any type: its arguments are read from the
  caller's memory): the monitor makes a ``SOCK_SEQPACKET`` pair itself, with
  the call's SOCK_NONBLOCK and SOCK_CLOEXEC, installs both ends in the caller
  (SECCOMP_IOCTL_NOTIF_ADDFD), writes their numbers to its ``int sv[2]``
  through /proc/PID/mem (opened, then checked with NOTIF_ID_VALID so the pid
  still names the caller), and the call returns 0. A datagram end could
  ``sendto()`` a host datagram socket by path; a connected seqpacket end
  ignores a ``sendto`` address and cannot be connected again, so the data
  goes to its peer. Messages keep their boundaries either way. What differs:
  ``SO_TYPE`` reads SOCK_SEQPACKET; a send once the peer is closed fails
  with EPIPE (and SIGPIPE, unless ignored or MSG_NOSIGNAL) where a datagram
  end gets ECONNREFUSED, and a read then sees end of file (0 bytes) where a
  datagram end would wait; ``connect()`` fails (EISCONN, or EPROTOTYPE for
  a datagram path) where a datagram end would be pointed elsewhere. Nothing
  leaves the sandbox, so the audit log has no line for it (the monitor's
  debug log does). Stream and seqpacket pairs never come here (they cannot
  reach a path).

Nothing is ever let through with SECCOMP_USER_NOTIF_FLAG_CONTINUE: every
answer is an error or a result the monitor made itself, so no decision rests
on memory the caller could change after it was read (TOCTOU). If the monitor
goes away, the kernel fails these calls with ENOSYS: closed, never open.

Error handling: a caller that goes away mid-answer is dropped quietly (the
kernel restarts an interrupted call, which comes back here; ends installed
before the interruption stay in the caller, unnumbered). When the pair
cannot be given (the caller's memory cannot be opened: EACCES, as at
Yama's ptrace_scope 3; at 1 and 2 the monitor passes by holding
CAP_SYS_PTRACE in the sandbox's user namespace, as root or as the user
whose namespace it is, untested here for want of Yama; ``sv`` cannot
be written, a bad pointer: EFAULT, checked before anything is installed),
the call fails with that errno, audited "failed". /proc/PID/mem writes
through page protections, so an ``sv`` in read-only memory of the caller's
is written where the kernel would say EFAULT: the caller's own memory
only. The monitor's own limits (EMFILE) fail the call with that errno.
Bad arguments get the kernel's own errnos (EINVAL,
EPROTONOSUPPORT, ESOCKTNOSUPPORT, EOPNOTSUPP for another family). Nothing a
program does ends :meth:`Supervisor.serve`; it returns once no process is left
under the filter.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

import trio

from .seccomp import ABIS, SOCK_TYPE_MASK, SYS_SOCKET, SYS_SOCKETPAIR, X32_SYSCALL_BIT, Abi
from .seccomp_notify import Listener, Notification, TargetGone, TargetMemory

log = logging.getLogger("arca_monitor.seccomp")

#: The option that lifts the filter: every refusal's audit line names it.
RULE = "--allow-unix-sockets"
NO_UNIX = f"no {RULE}: the sandbox's programs make no AF_UNIX sockets (they could reach the host's path sockets)"
NO_IO_URING = f"no {RULE}: io_uring could make sockets the filter cannot see"
TYPE_FLAGS = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
PAIR = struct.Struct("<ii")
#: socketcall(SYS_SOCKETPAIR)'s argument block in an i386 caller's memory: domain, type, protocol, sv.
SOCKETCALL_PAIR = struct.Struct("<IIII")


class Recorder(Protocol):
    """Where refusals are audited and counted: the sandbox's :class:`~.broker.Broker`."""

    denials: int

    def record(self, event: str, **fields: object) -> None: ...


class Call(enum.Enum):
    SOCKET = "socket"
    SOCKETPAIR = "socketpair"
    SOCKETCALL = "socketcall"
    IO_URING_SETUP = "io_uring_setup"


def classify(arch: int, nr: int) -> Call | None:
    """Which of the filter's calls ``nr`` is in the ABI ``arch``; None for any other."""
    abi: Abi | None = next((abi for abis in ABIS.values() for abi in abis if abi.arch == arch), None)
    if abi is None:
        return None
    if abi.x32:
        nr &= ~X32_SYSCALL_BIT
    numbers = {abi.socket: Call.SOCKET, abi.socketpair: Call.SOCKETPAIR, abi.io_uring_setup: Call.IO_URING_SETUP}
    if abi.socketcall is not None:
        numbers[abi.socketcall] = Call.SOCKETCALL
    return numbers.get(nr)


def type_name(kind: int) -> str:
    """``SOCK_DGRAM|SOCK_CLOEXEC``: a socket type argument as the audit log shows it."""
    base = kind & SOCK_TYPE_MASK
    try:
        parts = [socket.SocketKind(base).name]
    except ValueError:
        parts = [str(base)]
    parts += [flag.name for flag in (socket.SOCK_NONBLOCK, socket.SOCK_CLOEXEC) if kind & flag and flag.name]
    rest = kind & ~(SOCK_TYPE_MASK | TYPE_FLAGS)
    return "|".join(parts + ([hex(rest)] if rest else []))


@dataclass(frozen=True)
class PairRequest:
    """What a socketpair call asks for, and where its ``int sv[2]`` is."""

    domain: int
    kind: int
    protocol: int
    sv: int

    def check(self) -> int:
        """0 if a pair can be made, else the errno the kernel would give."""
        if self.domain != socket.AF_UNIX:
            return errno.EOPNOTSUPP
        if self.kind & ~(SOCK_TYPE_MASK | TYPE_FLAGS):
            return errno.EINVAL
        if self.protocol not in (0, socket.AF_UNIX):
            return errno.EPROTONOSUPPORT
        if self.kind & SOCK_TYPE_MASK not in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW,
                                              socket.SOCK_SEQPACKET):
            return errno.ESOCKTNOSUPPORT
        return 0

    @property
    def made(self) -> socket.SocketKind:
        """The type the monitor makes: seqpacket for a datagram pair, the asked type otherwise."""
        base = self.kind & SOCK_TYPE_MASK
        return socket.SOCK_SEQPACKET if base in (socket.SOCK_DGRAM, socket.SOCK_RAW) else socket.SocketKind(base)


def _proc_fields(pid: int) -> tuple[str | None, int | None]:
    """The caller's command name and its pid in the sandbox's namespace (None where /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as file:
            comm: str | None = file.read().rstrip("\n")
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as file:
            nspid = next((line.split()[1:] for line in file if line.startswith("NSpid:")), [])
    except OSError:
        return None, None
    return comm, int(nspid[-1]) if nspid else None


class Supervisor:
    """Answers every call of one listener (see the module's docstring), auditing and counting through ``broker``."""

    def __init__(self, listener: Listener, broker: Recorder) -> None:
        self.listener = listener
        self.broker = broker

    async def serve(self) -> None:
        """Answer calls until no process is left under the filter (or until cancelled)."""
        while True:
            await trio.lowlevel.wait_readable(self.listener.fd)
            state = self.listener.pending()
            if state is None:
                return
            if state:
                notification = self.listener.receive()
                if notification is not None:
                    self.answer(notification)

    def answer(self, notification: Notification) -> None:
        """Answer one call; never raises for what a program did."""
        try:
            self._answer(notification)
        except TargetGone:
            log.debug("seccomp: pid %d went away before its answer", notification.pid)
        except OSError as exc:  # the monitor's own limits (EMFILE), or the listener failed: the call fails closed
            log.warning("seccomp: answering pid %d: %s", notification.pid, exc)
            with contextlib.suppress(OSError):
                self.listener.reply(notification, error=exc.errno or errno.EACCES)

    def _answer(self, notification: Notification) -> None:
        call = classify(notification.arch, notification.nr)
        args = notification.args
        match call:
            case Call.SOCKET:
                self._refuse(notification, f"socket(AF_UNIX, {type_name(args[1] & 0xFFFFFFFF)})", errno.EACCES,
                             NO_UNIX)
            case Call.SOCKETCALL if args[0] & 0xFFFFFFFF == SYS_SOCKET:
                self._refuse(notification, "socketcall(SYS_SOCKET)", errno.EACCES,
                             f"{NO_UNIX}; socketcall's domain is out of the filter's sight")
            case Call.SOCKETCALL if args[0] & 0xFFFFFFFF == SYS_SOCKETPAIR:
                self._socketcall_pair(notification)
            case Call.SOCKETPAIR:
                low = [arg & 0xFFFFFFFF for arg in args]  # the kernel reads ints: so does the filter
                request = PairRequest(domain=low[0], kind=low[1], protocol=low[2], sv=args[3])
                self._pair(notification, "socketpair", request)
            case Call.IO_URING_SETUP:
                self._refuse(notification, "io_uring_setup", errno.ENOSYS, NO_IO_URING)
            case _:  # the filter sends nothing else; whatever it is, it does not get through
                log.warning("seccomp: unexpected call %d (arch %#x) from pid %d", notification.nr,
                            notification.arch, notification.pid)
                self.listener.reply(notification, error=errno.ENOSYS)

    def _refuse(self, notification: Notification, call: str, code: int, reason: str) -> None:
        comm, sandbox_pid = _proc_fields(notification.pid)  # while the caller waits: the pid is still its own
        if self.listener.reply(notification, error=code):
            self.broker.denials += 1
            self._record(notification, call, comm, sandbox_pid, decision="denied", errno=errno.errorcode[code],
                         reason=reason, rule=RULE)

    def _socketcall_pair(self, notification: Notification) -> None:
        try:
            with TargetMemory(self.listener, notification) as memory:
                block = memory.read(notification.args[1] & 0xFFFFFFFF, SOCKETCALL_PAIR.size)
        except OSError as exc:
            self._failed(notification, "socketcall(SYS_SOCKETPAIR)", errno.EFAULT, f"reading its arguments: {exc}")
            return
        self._pair(notification, "socketcall(SYS_SOCKETPAIR)", PairRequest(*SOCKETCALL_PAIR.unpack(block)))

    def _pair(self, notification: Notification, name: str, request: PairRequest) -> None:
        call = f"{name}(AF_UNIX, {type_name(request.kind)})" if request.domain == socket.AF_UNIX else name
        code = request.check()
        if code:
            self.listener.reply(notification, error=code)
            return
        comm = _proc_fields(notification.pid)[0]
        try:
            memory = TargetMemory(self.listener, notification)
        except OSError as exc:
            self._failed(notification, call, errno.EACCES, f"the caller's memory cannot be opened: {exc}")
            return
        with memory:
            try:
                memory.write(request.sv, PAIR.pack(-1, -1))  # a bad pointer fails here, before anything is given
            except OSError as exc:
                self._failed(notification, call, errno.EFAULT, f"sv cannot be written: {exc}")
                return
            left, right = socket.socketpair(socket.AF_UNIX, request.made)
            with left, right:
                left.setblocking(not request.kind & socket.SOCK_NONBLOCK)
                right.setblocking(not request.kind & socket.SOCK_NONBLOCK)
                cloexec = bool(request.kind & socket.SOCK_CLOEXEC)
                numbers = [self.listener.add_fd(notification, end.fileno(), cloexec=cloexec) for end in (left, right)]
            try:
                memory.write(request.sv, PAIR.pack(*numbers))
            except OSError as exc:
                self._failed(notification, call, errno.EFAULT, f"sv cannot be written: {exc}")
                return
        if self.listener.reply(notification, value=0):  # nothing left the sandbox: not in the audit log
            log.debug("seccomp: %s from pid %d (%s): a %s pair", call, notification.pid, comm, request.made.name)

    def _failed(self, notification: Notification, call: str, code: int, reason: str) -> None:
        comm, sandbox_pid = _proc_fields(notification.pid)
        if self.listener.reply(notification, error=code):
            self._record(notification, call, comm, sandbox_pid, decision="failed", errno=errno.errorcode[code],
                         reason=reason)
            log.warning("seccomp: %s from pid %d failed: %s", call, notification.pid, reason)

    def _record(self, notification: Notification, call: str, comm: str | None, sandbox_pid: int | None,
                **fields: object) -> None:
        self.broker.record("seccomp", call=call, pid=notification.pid, sandbox_pid=sandbox_pid, comm=comm, **fields)
