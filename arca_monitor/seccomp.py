"""No new AF_UNIX sockets in the sandbox: a seccomp filter, installed just before the command is exec'd.

``socket(AF_UNIX, ...)`` fails with EACCES, whatever the type; ``socketpair``
keeps working, so programs keep their own IPC, and descriptors the sandbox
already holds (its channel to the monitor) are untouched. The filter is a
small classic-BPF program installed through ctypes, after
``prctl(PR_SET_NO_NEW_PRIVS)``: no binding is needed (Debian's
python3-seccomp serves only the system Python, and PyPI has no well-kept
one). A filter is kept across fork, clone and execve, and cannot be removed,
so everything the command starts is filtered too.

It comes in two forms:

* :func:`install_supervised` (what arca-run's sandbox installs): the calls
  below go to a supervisor, the monitor's :mod:`arca_monitor.seccomp_supervisor`
  (SECCOMP_RET_USER_NOTIF; the filter is installed with
  ``seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER)``,
  which gives the listener descriptor the supervisor reads them on). The
  supervisor refuses what is refused below with the same errnos, and writes
  one audit line for each refusal; it also gets ``socketpair(AF_UNIX,
  SOCK_DGRAM or SOCK_RAW)`` and i386's ``socketcall(SYS_SOCKETPAIR)``, and
  makes a seqpacket pair instead (a datagram end could ``sendto()`` a host
  socket by path). While no supervisor holds the listener, these calls fail
  with ENOSYS (the kernel's answer): closed, never open.
* :func:`install_no_unix_sockets` (``python -m arca_monitor.seccomp``): the
  kernel refuses the calls itself (SECCOMP_RET_ERRNO); nothing is audited and
  datagram socketpairs work as ever.

What the program checks, for each system call:

1. The architecture (``seccomp_data.arch``), because syscall numbers differ
   between ABIs and a process may use another one (a 32-bit binary, or
   ``int 0x80`` from a 64-bit one). The native ABI and its compat ABI are
   checked; a call from any other ABI kills the process.
2. ``socket`` with domain AF_UNIX: EACCES. Only the low 32 bits of the
   argument count, as the kernel reads an int. On x86_64 the x32 numbers
   (bit 30 set) are checked too. i386 also has ``socketcall``, whose
   arguments sit behind a pointer the filter cannot read: its SYS_SOCKET
   call is refused whatever the domain (32-bit glibc calls ``socket``
   directly; other socketcall calls pass, but for SYS_SOCKETPAIR when
   supervised).
3. ``io_uring_setup``: ENOSYS, as on a kernel without io_uring. Its SOCKET
   operation makes sockets without any system call a filter sees; programs
   that use io_uring fall back to plain system calls on ENOSYS.
4. Supervised only: ``socketpair`` with domain AF_UNIX and a datagram type
   (the type's low four bits, SOCK_DGRAM or SOCK_RAW, which AF_UNIX makes a
   datagram pair too), for the supervisor to substitute.

Everything else is allowed. Supported machines: x86_64 (with i386) and
aarch64 (its 32-bit ABI is not covered, so such calls are killed).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
from dataclasses import dataclass

# prctl(2) and seccomp(2) constants, from linux/prctl.h, linux/seccomp.h and linux/audit.h.
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
#: The call waits for the monitor's supervisor (:mod:`arca_monitor.seccomp_supervisor`), which answers it.
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_SET_MODE_FILTER = 1
#: seccomp(2) returns a listener descriptor for the filter's USER_NOTIF calls.
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
#: seccomp(2)'s own number, by ``uname -m`` (the installing process is native).
SECCOMP_SYSCALL = {"x86_64": 317, "aarch64": 277}
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
#: x32 system calls are x86_64's numbers with this bit set (and the x86_64 arch).
X32_SYSCALL_BIT = 0x40000000
#: socketcall(2)'s call numbers for socket() and socketpair().
SYS_SOCKET = 1
SYS_SOCKETPAIR = 8
#: The socket type without SOCK_NONBLOCK and SOCK_CLOEXEC (linux/net.h's SOCK_TYPE_MASK).
SOCK_TYPE_MASK = 0xF

# Classic BPF instructions used here (linux/filter.h): load a 32-bit word at an offset of
# struct seccomp_data, jump if the accumulator equals a constant, return a constant.
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
BPF_ALU_AND_K = 0x54
# Offsets in struct seccomp_data: nr, arch, instruction pointer, then six u64 arguments
# (little endian on both machines, so an argument's low 32 bits come first).
OFFSET_NR = 0
OFFSET_ARCH = 4
OFFSET_ARG0 = 16
OFFSET_ARG1 = 24


@dataclass(frozen=True)
class Abi:
    """The system call numbers the filter checks in one ABI."""

    arch: int
    socket: int
    socketpair: int
    io_uring_setup: int
    socketcall: int | None = None
    x32: bool = False


#: By ``uname -m``: the native ABI first, then the compat ABI the kernel also runs.
ABIS: dict[str, tuple[Abi, ...]] = {
    "x86_64": (
        Abi(AUDIT_ARCH_X86_64, socket=41, socketpair=53, io_uring_setup=425, x32=True),
        Abi(AUDIT_ARCH_I386, socket=359, socketpair=360, io_uring_setup=425, socketcall=102),
    ),
    "aarch64": (Abi(AUDIT_ARCH_AARCH64, socket=198, socketpair=199, io_uring_setup=425),),
}

#: One BPF instruction: (code, jump if true, jump if false, constant).
Instruction = tuple[int, int, int, int]
#: Before assembly a jump names its targets: a label, or None to go on with the next instruction.
_Step = tuple[int, str | None, str | None, int]


class _Assembler:
    """BPF with named jump targets, resolved to the relative offsets BPF wants."""

    def __init__(self) -> None:
        self.steps: list[_Step] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.steps)

    def load(self, offset: int) -> None:
        self.steps.append((BPF_LD_W_ABS, None, None, offset))

    def jump_if(self, value: int, then: str | None, otherwise: str | None = None) -> None:
        self.steps.append((BPF_JEQ_K, then, otherwise, value))

    def mask(self, value: int) -> None:
        self.steps.append((BPF_ALU_AND_K, None, None, value))

    def ret(self, action: int) -> None:
        self.steps.append((BPF_RET_K, None, None, action))

    def assemble(self) -> list[Instruction]:
        def offset(index: int, target: str | None) -> int:
            if target is None:
                return 0
            distance = self.labels[target] - index - 1
            if not 0 <= distance <= 255:
                raise ValueError(f"BPF jump to {target} out of reach")
            return distance

        return [(code, offset(i, jt), offset(i, jf), k) for i, (code, jt, jf, k) in enumerate(self.steps)]


def build_filter(machine: str, *, supervised: bool = False) -> list[Instruction]:
    """The filter's program for ``machine`` (as ``uname -m`` says); OSError ENOSYS for one not supported.

    Unsupervised, refusals are the kernel's (RET_ERRNO); ``supervised``, the
    same calls and datagram socketpairs go to the supervisor (RET_USER_NOTIF).
    """
    abis = ABIS.get(machine)
    if abis is None:
        raise OSError(errno.ENOSYS, f"no seccomp filter for {machine} machines")
    bpf = _Assembler()
    bpf.load(OFFSET_ARCH)
    for index, abi in enumerate(abis):
        bpf.jump_if(abi.arch, f"abi{index}")
    bpf.ret(SECCOMP_RET_KILL_PROCESS)
    for index, abi in enumerate(abis):
        bpf.label(f"abi{index}")
        bpf.load(OFFSET_NR)
        bpf.jump_if(abi.socket, "socket")
        bpf.jump_if(abi.io_uring_setup, "nosys")
        if supervised:
            bpf.jump_if(abi.socketpair, "socketpair")
        if abi.x32:
            bpf.jump_if(abi.socket | X32_SYSCALL_BIT, "socket")
            bpf.jump_if(abi.io_uring_setup | X32_SYSCALL_BIT, "nosys")
            if supervised:
                bpf.jump_if(abi.socketpair | X32_SYSCALL_BIT, "socketpair")
        if abi.socketcall is not None:
            bpf.jump_if(abi.socketcall, "socketcall")
        bpf.ret(SECCOMP_RET_ALLOW)
    bpf.label("socket")
    bpf.load(OFFSET_ARG0)
    bpf.jump_if(socket.AF_UNIX, "deny", "allow")
    if supervised:
        # A datagram pair (SOCK_RAW is one too for AF_UNIX) is made by the supervisor instead.
        bpf.label("socketpair")
        bpf.load(OFFSET_ARG0)
        bpf.jump_if(socket.AF_UNIX, None, "allow")
        bpf.load(OFFSET_ARG1)
        bpf.mask(SOCK_TYPE_MASK)
        bpf.jump_if(socket.SOCK_DGRAM, "notify")
        bpf.jump_if(socket.SOCK_RAW, "notify", "allow")
    if any(abi.socketcall is not None for abi in abis):
        bpf.label("socketcall")
        bpf.load(OFFSET_ARG0)
        if supervised:  # the supervisor reads socketpair's arguments from memory, and makes the pair itself
            bpf.jump_if(SYS_SOCKETPAIR, "notify")
        bpf.jump_if(SYS_SOCKET, "deny", "allow")
    if supervised:
        bpf.label("deny")
        bpf.label("nosys")
        bpf.label("notify")
        bpf.ret(SECCOMP_RET_USER_NOTIF)
    else:
        bpf.label("deny")
        bpf.ret(SECCOMP_RET_ERRNO | errno.EACCES)
        bpf.label("nosys")
        bpf.ret(SECCOMP_RET_ERRNO | errno.ENOSYS)
    bpf.label("allow")
    bpf.ret(SECCOMP_RET_ALLOW)
    return bpf.assemble()


class _SockFilter(ctypes.Structure):
    _fields_ = (("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


def _fprog(program: list[Instruction]) -> _SockFprog:
    instructions = (_SockFilter * len(program))(*(_SockFilter(*instruction) for instruction in program))
    return _SockFprog(len(program), instructions)


def _no_new_privs(libc: ctypes.CDLL) -> None:
    # No new privileges: a set-uid program exec'd later cannot shed the filter, and the kernel
    # lets a process without CAP_SYS_ADMIN install a filter only with it set.
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(code)}")


def install_no_unix_sockets() -> None:
    """Filter the calling thread, and all it forks and execs from now on; see the module docstring.

    Call it in the process about to exec the command, while it has one
    thread (after fork, in a launcher); a thread started earlier is not
    filtered. Raises OSError if the kernel refuses or the machine is not supported.
    """
    fprog = _fprog(build_filter(os.uname().machine))
    libc = ctypes.CDLL(None, use_errno=True)
    _no_new_privs(libc)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SET_SECCOMP): {os.strerror(code)}")


def install_supervised() -> int:
    """As :func:`install_no_unix_sockets`, with the supervised program; the filter's listener descriptor.

    The descriptor is close-on-exec: hand it to the supervisor (SCM_RIGHTS), then close it, before
    exec. While nobody holds it the calls it would answer fail with ENOSYS (the kernel's answer
    when a listener is gone): fail closed. OSError if the kernel refuses (it needs 5.9 or later
    for everything the supervisor does).
    """
    machine = os.uname().machine
    fprog = _fprog(build_filter(machine, supervised=True))
    libc = ctypes.CDLL(None, use_errno=True)
    _no_new_privs(libc)
    listener = libc.syscall(ctypes.c_long(SECCOMP_SYSCALL[machine]), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                            ctypes.c_long(SECCOMP_FILTER_FLAG_NEW_LISTENER), ctypes.byref(fprog))
    if listener < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"seccomp(SECCOMP_SET_MODE_FILTER, NEW_LISTENER): {os.strerror(code)}")
    return int(listener)


def main(argv: list[str] | None = None) -> None:
    """``python -m arca_monitor.seccomp COMMAND [ARG...]``: install the filter, then exec the command."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit("usage: python -m arca_monitor.seccomp [--] COMMAND [ARG...]")
    install_no_unix_sockets()
    os.execvp(args[0], args)


if __name__ == "__main__":
    main()


__all__ = ["ABIS", "Abi", "Instruction", "build_filter", "install_no_unix_sockets", "install_supervised", "main"]
