"""The seccomp filter: no new AF_UNIX sockets, socketpair and other families untouched, inherited by children.

A filter cannot be removed, so every real check runs in a child process:
``_observe`` installs the filter (or not, for the comparison), tries each
call and prints what happened as JSON; the test reads it. The filter's
program is also run through a small BPF interpreter here, for every ABI in
its table, including the ones this machine cannot run.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import json
import logging
import mmap
import os
import select
import socket
import struct
import subprocess
import sys

import pytest
import trio

from arca_monitor import seccomp, seccomp_notify
from arca_monitor.seccomp import ABIS, Instruction, build_filter
from arca_monitor.seccomp_notify import Listener, TargetGone, TargetMemory
from arca_monitor.seccomp_supervisor import Call, Supervisor, classify, type_name

from .netns import ROOT

#: x86_64 machine code for ``int32 i386_syscall(nr, a, b, c)``: eax = nr, ebx = a, ecx = b, edx = c,
#: then ``int 0x80``, the i386 ABI's system call from a 64-bit process (rbx saved, as the C ABI wants).
I386_SYSCALL = bytes.fromhex(
    "53"  # push rbx
    "89f8"  # mov eax, edi
    "89f3"  # mov ebx, esi
    "4189d0"  # mov r8d, edx
    "89ca"  # mov edx, ecx
    "4489c1"  # mov ecx, r8d
    "cd80"  # int 0x80
    "5b"  # pop rbx
    "c3"  # ret
)
I386_SOCKET, I386_SOCKETCALL, I386_CLOSE = 359, 102, 6
SYS_SOCKETPAIR = 8
MAP_32BIT = 0x40  # x86_64 mmap flag: memory below 4 GiB, where an i386 call can point


def _errno_of(call) -> int:
    """0 if ``call()`` works (closing what it made), else the errno it fails with."""
    try:
        made = call()
    except OSError as error:
        return error.errno or -1
    for thing in made if isinstance(made, tuple) else (made,):
        thing.close()
    return 0


def _raw_socket(domain: int, kind: int) -> int:
    """socket(2) through libc's syscall(), so the domain's upper 32 bits reach the filter."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(ctypes.c_long(41), ctypes.c_long(domain), ctypes.c_long(kind), ctypes.c_long(0))
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


def _i386() -> dict[str, int]:
    """What i386 system calls (int 0x80) give: socket and socketcall, by domain and call."""
    code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    code.write(I386_SYSCALL)
    address = ctypes.addressof(ctypes.c_char.from_buffer(code))
    call = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int)(address)
    low = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_32BIT)
    arguments = (ctypes.c_uint32 * 4).from_buffer(low)
    arguments_address = ctypes.addressof(arguments)
    assert arguments_address < 1 << 32

    def result(value: int) -> int:
        if value >= 0:
            call(I386_CLOSE, value, 0, 0)
            return 0
        return -value

    seen = {
        "socket_unix": result(call(I386_SOCKET, socket.AF_UNIX, socket.SOCK_STREAM, 0)),
        "socket_inet": result(call(I386_SOCKET, socket.AF_INET, socket.SOCK_STREAM, 0)),
    }
    arguments[:3] = [socket.AF_INET, socket.SOCK_STREAM, 0]
    seen["socketcall_socket"] = result(call(I386_SOCKETCALL, 1, arguments_address, 0))
    pair = (ctypes.c_uint32 * 2).from_buffer(low, 16)
    arguments[:4] = [socket.AF_UNIX, socket.SOCK_STREAM, 0, ctypes.addressof(pair)]
    value = call(I386_SOCKETCALL, SYS_SOCKETPAIR, arguments_address, 0)
    seen["socketcall_socketpair"] = -value if value < 0 else 0
    if value == 0:
        os.close(pair[0])
        os.close(pair[1])
    return seen


def _observe(filtered: bool) -> None:
    """In a child: install the filter (if ``filtered``), try everything, print the outcomes as JSON."""
    if filtered:
        seccomp.install_no_unix_sockets()
    seen: dict[str, object] = {}
    for name, kind in (("stream", socket.SOCK_STREAM), ("dgram", socket.SOCK_DGRAM), ("seqpacket", socket.SOCK_SEQPACKET)):
        seen[f"unix_{name}"] = _errno_of(lambda kind=kind: socket.socket(socket.AF_UNIX, kind))
        flags = kind | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        seen[f"unix_{name}_flags"] = _errno_of(lambda flags=flags: socket.socket(socket.AF_UNIX, flags))
    seen["unix_high_bits"] = _raw_socket(socket.AF_UNIX | 1 << 32, socket.SOCK_STREAM)
    seen["inet_high_bits"] = _raw_socket(socket.AF_INET | 1 << 32, socket.SOCK_STREAM)
    # socketpair still works, carries data and descriptors.
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        read_end, write_end = os.pipe()
        socket.send_fds(left, [b"fd"], [read_end])
        data, fds, _, _ = socket.recv_fds(right, 16, 1)
        os.write(write_end, b"through")
        seen["socketpair"] = [data.decode(), os.read(fds[0], 16).decode()]
        for fd in (read_end, write_end, *fds):
            os.close(fd)
    # Other families are untouched: a TCP connection over loopback, v4 and v6, and UDP.
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as server:
            server.bind((host, 0))
            server.listen()
            with socket.create_connection(server.getsockname()[:2], timeout=5) as client:
                client.sendall(b"ok")
                accepted, _ = server.accept()
                with accepted:
                    seen[f"tcp{family}"] = accepted.recv(2).decode()
    seen["udp"] = _errno_of(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    libc = ctypes.CDLL(None, use_errno=True)
    seen["io_uring_setup"] = 0 if libc.syscall(425, 1, None) >= 0 else ctypes.get_errno()
    seen["x32_socket"] = 0 if libc.syscall(41 | 0x40000000, socket.AF_UNIX, socket.SOCK_STREAM, 0) >= 0 else ctypes.get_errno()
    seen["i386"] = _i386()
    # Children inherit the filter: a forked one, and a program it execs.
    pid = os.fork()
    if pid == 0:
        os._exit(_errno_of(lambda: socket.socket(socket.AF_UNIX)))
    seen["forked"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    probe = "import socket\ntry:\n    socket.socket(socket.AF_UNIX)\nexcept OSError as e:\n    print(e.errno)\nelse:\n    print(0)\n"
    seen["execd"] = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    seen["status"] = [fields["Seccomp"].strip(), fields["NoNewPrivs"].strip()]
    print(json.dumps(seen))


def _run_child(filtered: bool) -> dict[str, object]:
    code = f"from tests.test_seccomp import _observe; _observe({filtered})"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen: dict[str, object] = json.loads(result.stdout)
    return seen


def test_no_new_unix_sockets_but_socketpair_and_other_families_work():
    seen = _run_child(filtered=True)
    for name in ("stream", "dgram", "seqpacket"):
        assert seen[f"unix_{name}"] == errno.EACCES, name
        assert seen[f"unix_{name}_flags"] == errno.EACCES, name
    assert seen["unix_high_bits"] == errno.EACCES  # the kernel reads an int: so does the filter
    assert seen["inet_high_bits"] == 0
    assert seen["socketpair"] == ["fd", "through"]
    assert seen[f"tcp{socket.AF_INET}"] == "ok"
    assert seen[f"tcp{socket.AF_INET6}"] == "ok"
    assert seen["udp"] == 0
    assert seen["io_uring_setup"] == errno.ENOSYS
    assert seen["x32_socket"] == errno.EACCES  # refused before the kernel finds it has no x32
    assert seen["i386"] == {"socket_unix": errno.EACCES, "socket_inet": 0, "socketcall_socket": errno.EACCES,
                            "socketcall_socketpair": 0}
    assert seen["forked"] == errno.EACCES
    assert seen["execd"] == errno.EACCES
    assert seen["status"] == ["2", "1"]  # filter mode, no new privileges


def test_without_the_filter_the_same_calls_work():
    # The comparison that shows the refusals above are the filter's doing.
    seen = _run_child(filtered=False)
    assert all(seen[f"unix_{name}"] == 0 for name in ("stream", "dgram", "seqpacket"))
    assert seen["unix_high_bits"] == 0
    assert seen["io_uring_setup"] == errno.EFAULT  # no parameters given: the kernel itself refuses
    assert seen["x32_socket"] == errno.ENOSYS  # this kernel has no x32 ABI
    assert seen["i386"] == {"socket_unix": 0, "socket_inet": 0, "socketcall_socket": 0, "socketcall_socketpair": 0}
    assert seen["forked"] == 0
    assert seen["execd"] == 0
    assert seen["status"] == ["0", "0"]


def test_the_launcher_execs_the_command_under_the_filter():
    probe = "import socket\ntry:\n    socket.socket(socket.AF_UNIX)\nexcept PermissionError as e:\n    print(e.errno)\n"
    result = subprocess.run([sys.executable, "-m", "arca_monitor.seccomp", "--", sys.executable, "-c", probe],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, str(errno.EACCES))
    result = subprocess.run([sys.executable, "-m", "arca_monitor.seccomp"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "usage" in result.stderr


# --- the program itself, for every ABI in the table ------------------------------

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_KILL_PROCESS = 0x80000000
EACCES = 0x00050000 | errno.EACCES
ENOSYS = 0x00050000 | errno.ENOSYS


def run_bpf(program: list[Instruction], arch: int, nr: int, arg0: int = 0, arg1: int = 0) -> int:
    """What the program returns for one system call: a classic-BPF interpreter for the four opcodes used."""
    words = {0: nr, 4: arch, 16: arg0 & 0xFFFFFFFF, 20: arg0 >> 32, 24: arg1 & 0xFFFFFFFF, 28: arg1 >> 32}
    accumulator = 0
    pc = 0
    for _ in range(len(program)):  # no backward jumps: each instruction runs at most once
        code, jt, jf, k = program[pc]
        if code == 0x20:  # load word
            accumulator = words[k]
            pc += 1
        elif code == 0x15:  # jump if equal
            pc += 1 + (jt if accumulator == k else jf)
        elif code == 0x54:  # and
            accumulator &= k
            pc += 1
        elif code == 0x06:  # return
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("fell off the end of the program")


@pytest.mark.parametrize(
    ("machine", "arch", "nr", "arg0", "action"),
    [
        ("x86_64", 0xC000003E, 41, socket.AF_UNIX, EACCES),
        ("x86_64", 0xC000003E, 41, socket.AF_UNIX | 0xFFFF_0000_0000, EACCES),
        ("x86_64", 0xC000003E, 41, socket.AF_INET, SECCOMP_RET_ALLOW),
        ("x86_64", 0xC000003E, 41, socket.AF_INET6, SECCOMP_RET_ALLOW),
        ("x86_64", 0xC000003E, 53, socket.AF_UNIX, SECCOMP_RET_ALLOW),  # socketpair
        ("x86_64", 0xC000003E, 0x40000000 | 41, socket.AF_UNIX, EACCES),  # x32
        ("x86_64", 0xC000003E, 0x40000000 | 53, socket.AF_UNIX, SECCOMP_RET_ALLOW),
        ("x86_64", 0xC000003E, 425, 0, ENOSYS),
        ("x86_64", 0xC000003E, 0x40000000 | 425, 0, ENOSYS),
        ("x86_64", 0xC000003E, 0, 0, SECCOMP_RET_ALLOW),  # read
        ("x86_64", 0x40000003, 359, socket.AF_UNIX, EACCES),  # i386
        ("x86_64", 0x40000003, 359, socket.AF_INET, SECCOMP_RET_ALLOW),
        ("x86_64", 0x40000003, 360, socket.AF_UNIX, SECCOMP_RET_ALLOW),  # socketpair
        ("x86_64", 0x40000003, 102, 1, EACCES),  # socketcall(SYS_SOCKET): its domain is out of sight
        ("x86_64", 0x40000003, 102, 8, SECCOMP_RET_ALLOW),  # socketcall(SYS_SOCKETPAIR)
        ("x86_64", 0x40000003, 41, socket.AF_UNIX, SECCOMP_RET_ALLOW),  # 41 is dup on i386
        ("x86_64", 0x40000003, 425, 0, ENOSYS),
        ("x86_64", 0xC00000B7, 198, socket.AF_UNIX, SECCOMP_RET_KILL_PROCESS),  # another machine's ABI
        ("aarch64", 0xC00000B7, 198, socket.AF_UNIX, EACCES),
        ("aarch64", 0xC00000B7, 198, socket.AF_INET, SECCOMP_RET_ALLOW),
        ("aarch64", 0xC00000B7, 199, socket.AF_UNIX, SECCOMP_RET_ALLOW),  # socketpair
        ("aarch64", 0xC00000B7, 425, 0, ENOSYS),
        ("aarch64", 0xC00000B7, 41, socket.AF_UNIX, SECCOMP_RET_ALLOW),
        ("aarch64", 0x40000028, 281, socket.AF_UNIX, SECCOMP_RET_KILL_PROCESS),  # 32-bit ARM: not covered
    ],
)
def test_the_program_for_each_abi(machine, arch, nr, arg0, action):
    assert run_bpf(build_filter(machine), arch, nr, arg0) == action


def test_programs_are_small_and_unknown_machines_are_refused():
    for machine in ABIS:
        program = build_filter(machine)
        assert len(program) < 40
        assert all(0 <= jt <= 255 and 0 <= jf <= 255 for _, jt, jf, _ in program)
    assert os.uname().machine in ABIS
    with pytest.raises(OSError, match="riscv64") as caught:
        build_filter("riscv64")
    assert caught.value.errno == errno.ENOSYS


# --- the supervised program, through the same interpreter --------------------------

NOTIFY = 0x7FC00000


@pytest.mark.parametrize(
    ("machine", "arch", "nr", "arg0", "arg1", "action"),
    [
        ("x86_64", 0xC000003E, 41, socket.AF_UNIX, socket.SOCK_STREAM, NOTIFY),
        ("x86_64", 0xC000003E, 41, socket.AF_INET, socket.SOCK_STREAM, SECCOMP_RET_ALLOW),
        ("x86_64", 0xC000003E, 53, socket.AF_UNIX, socket.SOCK_DGRAM, NOTIFY),
        ("x86_64", 0xC000003E, 53, socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | 1 << 32, NOTIFY),
        ("x86_64", 0xC000003E, 53, socket.AF_UNIX, socket.SOCK_RAW, NOTIFY),  # AF_UNIX makes that a datagram pair
        ("x86_64", 0xC000003E, 53, socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, SECCOMP_RET_ALLOW),
        ("x86_64", 0xC000003E, 53, socket.AF_UNIX, socket.SOCK_SEQPACKET, SECCOMP_RET_ALLOW),
        ("x86_64", 0xC000003E, 53, socket.AF_INET, socket.SOCK_DGRAM, SECCOMP_RET_ALLOW),  # the kernel refuses it
        ("x86_64", 0xC000003E, 0x40000000 | 53, socket.AF_UNIX, socket.SOCK_DGRAM, NOTIFY),  # x32
        ("x86_64", 0xC000003E, 0x40000000 | 41, socket.AF_UNIX, socket.SOCK_DGRAM, NOTIFY),
        ("x86_64", 0xC000003E, 425, 0, 0, NOTIFY),
        ("x86_64", 0xC000003E, 0, 0, 0, SECCOMP_RET_ALLOW),
        ("x86_64", 0x40000003, 359, socket.AF_UNIX, socket.SOCK_DGRAM, NOTIFY),
        ("x86_64", 0x40000003, 360, socket.AF_UNIX, socket.SOCK_DGRAM, NOTIFY),
        ("x86_64", 0x40000003, 360, socket.AF_UNIX, socket.SOCK_STREAM, SECCOMP_RET_ALLOW),
        ("x86_64", 0x40000003, 102, 1, 0, NOTIFY),  # socketcall(SYS_SOCKET)
        ("x86_64", 0x40000003, 102, 8, 0, NOTIFY),  # socketcall(SYS_SOCKETPAIR): its type is in memory
        ("x86_64", 0x40000003, 102, 3, 0, SECCOMP_RET_ALLOW),  # socketcall(SYS_CONNECT)
        ("x86_64", 0x40000003, 425, 0, 0, NOTIFY),
        ("x86_64", 0xC00000B7, 198, socket.AF_UNIX, 0, SECCOMP_RET_KILL_PROCESS),
        ("aarch64", 0xC00000B7, 198, socket.AF_UNIX, socket.SOCK_STREAM, NOTIFY),
        ("aarch64", 0xC00000B7, 199, socket.AF_UNIX, socket.SOCK_DGRAM, NOTIFY),
        ("aarch64", 0xC00000B7, 199, socket.AF_UNIX, socket.SOCK_STREAM, SECCOMP_RET_ALLOW),
        ("aarch64", 0xC00000B7, 425, 0, 0, NOTIFY),
    ],
)
def test_the_supervised_program_for_each_abi(machine, arch, nr, arg0, arg1, action):
    assert run_bpf(build_filter(machine, supervised=True), arch, nr, arg0, arg1) == action


def test_supervised_programs_are_small():
    for machine in ABIS:
        program = build_filter(machine, supervised=True)
        assert len(program) < 50
        assert SECCOMP_RET_ERRNO_ANY not in {k & 0xFFFF0000 for code, _, _, k in program if code == 0x06}


# --- the notification interface ------------------------------------------------------

SECCOMP_RET_ERRNO_ANY = 0x00050000


def test_struct_layouts_and_ioctl_numbers_are_linuxs():
    # linux/seccomp.h on x86_64 and aarch64 alike (the _IOC layout of asm-generic/ioctl.h).
    assert (seccomp_notify.NOTIF.size, seccomp_notify.RESPONSE.size, seccomp_notify.ADDFD.size) == (80, 24, 24)
    assert seccomp_notify.NOTIF_RECV == 0xC0502100
    assert seccomp_notify.NOTIF_SEND == 0xC0182101
    assert seccomp_notify.NOTIF_ID_VALID == 0x40082102
    assert seccomp_notify.NOTIF_ADDFD == 0x40182103
    assert seccomp_notify.notif_sizes() == (80, 24, 64)  # what this kernel says: seccomp_data is 64 bytes
    raw = struct.pack("<QIIiIQ6Q", 7, 1234, 0, 53, 0xC000003E, 0xDEAD, 1, 2, 3, 4, 5, 6)
    assert seccomp_notify.Notification.unpack(raw) == seccomp_notify.Notification(
        7, 1234, 0, 53, 0xC000003E, 0xDEAD, (1, 2, 3, 4, 5, 6))
    assert seccomp_notify.RESPONSE.pack(7, 0, -errno.EACCES, 0) == struct.pack("<QqiI", 7, 0, -13, 0)


def test_calls_are_named_as_their_abi_numbers_them():
    assert classify(0xC000003E, 41) is Call.SOCKET
    assert classify(0xC000003E, 0x40000000 | 53) is Call.SOCKETPAIR
    assert classify(0x40000003, 102) is Call.SOCKETCALL
    assert classify(0x40000003, 41) is None  # dup on i386
    assert classify(0xC00000B7, 425) is Call.IO_URING_SETUP
    assert classify(0x12345678, 41) is None
    assert type_name(socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) == "SOCK_DGRAM|SOCK_CLOEXEC"
    assert type_name(0x10_0000 | 9) == "9|0x100000"


class _Recorder:
    """The broker's audit and counts, as the supervisor uses them."""

    def __init__(self) -> None:
        self.denials = 0
        self.lines: list[dict[str, object]] = []

    def record(self, event: str, **fields: object) -> None:
        self.lines.append({"event": event, **fields})


def _supervised(channel_fd: int, path: str) -> None:
    """In a child: the supervised filter, its listener to the parent on ``channel_fd``, then each call."""
    channel = socket.socket(fileno=channel_fd)
    listener = seccomp.install_supervised()
    socket.send_fds(channel, [b"listener"], [listener])
    os.close(listener)
    seen: dict[str, object] = {"unix": _errno_of(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))}
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with left, right:
        left.send(b"one")
        left.send(b"two")
        right.send(b"back")
        seen["messages"] = [right.recv(64).decode(), right.recv(64).decode(), left.recv(64).decode()]
        seen["so_type"] = left.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        seen["blocking"] = [left.getblocking(), os.get_inheritable(left.fileno())]
        # The host's datagram socket by path: the address is ignored, the message goes to the peer.
        seen["sendto"] = left.sendto(b"x", path)
        seen["peer_got"] = right.recv(64).decode()
        seen["connect"] = _errno_of(lambda: left.connect(path))
        right.close()
        seen["to_closed_peer"] = _errno_of(lambda: left.send(b"y"))
    flagged = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    seen["flagged"] = [flagged[0].getblocking(), fcntl.fcntl(flagged[1].fileno(), fcntl.F_GETFD)]
    for end in flagged:
        end.close()
    stream = socket.socketpair()
    stream[0].sendall(b"stream")
    seen["stream"] = stream[1].recv(16).decode()
    libc = ctypes.CDLL(None, use_errno=True)
    bad = libc.syscall(53, socket.AF_UNIX, socket.SOCK_DGRAM, 0, ctypes.c_void_p(8))  # sv: an unmapped page
    seen["bad_sv"] = 0 if bad == 0 else ctypes.get_errno()
    seen["io_uring_setup"] = 0 if libc.syscall(425, 1, None) >= 0 else ctypes.get_errno()
    plain = (ctypes.c_int * 2)()  # no SOCK_CLOEXEC (Python always asks for it): inherited across exec
    made = libc.syscall(53, socket.AF_UNIX, socket.SOCK_DGRAM, 0, plain)
    seen["plain"] = [made, *(fcntl.fcntl(fd, fcntl.F_GETFD) for fd in plain)]
    for fd in plain:
        os.close(fd)
    seen["i386"] = _i386_pairs()
    print(json.dumps(seen), flush=True)


def _i386_pairs() -> dict[str, object]:
    """i386's socketcall: SYS_SOCKET refused, SYS_SOCKETPAIR(SOCK_DGRAM) made a seqpacket pair."""
    code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    code.write(I386_SYSCALL)
    call = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int)(
        ctypes.addressof(ctypes.c_char.from_buffer(code)))
    low = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_32BIT)
    arguments = (ctypes.c_uint32 * 4).from_buffer(low)
    pair = (ctypes.c_int32 * 2).from_buffer(low, 16)
    arguments[:3] = [socket.AF_INET, socket.SOCK_STREAM, 0]
    seen: dict[str, object] = {"socketcall_socket": -call(I386_SOCKETCALL, 1, ctypes.addressof(arguments), 0)}
    arguments[:4] = [socket.AF_UNIX, socket.SOCK_DGRAM, 0, ctypes.addressof(pair)]
    seen["socketcall_socketpair"] = call(I386_SOCKETCALL, SYS_SOCKETPAIR, ctypes.addressof(arguments), 0)
    with socket.socket(fileno=pair[0]) as left, socket.socket(fileno=pair[1]) as right:
        left.send(b"i386")
        seen["i386_pair"] = [right.recv(8).decode(), left.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)]
    return seen


def test_the_supervisor_refuses_audits_counts_and_substitutes_datagram_pairs(tmp_path):
    host = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "host.sock")
    host.bind(path)
    host.setblocking(False)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    code = f"from tests.test_seccomp import _supervised; _supervised({child.fileno()}, {path!r})"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, pass_fds=(child.fileno(),),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.close()
    recorder = _Recorder()
    with parent, host:
        parent.settimeout(30)
        _, fds, _, _ = socket.recv_fds(parent, 16, 1)
        try:
            async def supervise() -> None:
                with trio.fail_after(30):
                    await Supervisor(Listener(fds[0]), recorder).serve()  # until the child has exited

            trio.run(supervise)
        finally:
            os.close(fds[0])
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        seen = json.loads(out)
        with pytest.raises(BlockingIOError):
            host.recv(16)  # the host's socket received nothing
    assert seen["unix"] == errno.EACCES
    assert seen["messages"] == ["one", "two", "back"]  # both ways, boundaries kept
    assert seen["so_type"] == socket.SOCK_SEQPACKET
    assert seen["blocking"] == [True, False]
    assert (seen["sendto"], seen["peer_got"]) == (1, "x")  # to the peer, not to the host's path
    assert seen["connect"] == errno.EPROTOTYPE  # no datagram end: it cannot be pointed at the path either
    assert seen["to_closed_peer"] == errno.EPIPE  # a datagram end would get ECONNREFUSED
    assert seen["flagged"] == [False, fcntl.FD_CLOEXEC]
    assert seen["plain"] == [0, 0, 0]
    assert seen["stream"] == "stream"
    assert seen["bad_sv"] == errno.EFAULT
    assert seen["io_uring_setup"] == errno.ENOSYS
    assert seen["i386"] == {"socketcall_socket": errno.EACCES, "socketcall_socketpair": 0,
                            "i386_pair": ["i386", socket.SOCK_SEQPACKET]}
    # One line per refusal, each counted; the bad pointer is a failure, not a denial; pairs leave no line.
    assert recorder.denials == 3
    assert [(line["call"], line["decision"], line["errno"]) for line in recorder.lines] == [
        ("socket(AF_UNIX, SOCK_DGRAM|SOCK_CLOEXEC)", "denied", "EACCES"),
        ("socketpair(AF_UNIX, SOCK_DGRAM)", "failed", "EFAULT"),
        ("io_uring_setup", "denied", "ENOSYS"),
        ("socketcall(SYS_SOCKET)", "denied", "EACCES"),
    ]
    refused = recorder.lines[0]
    assert (refused["event"], refused["pid"], refused["sandbox_pid"], refused["comm"]) == (
        "seccomp", process.pid, process.pid, os.path.basename(sys.executable)[:15])
    assert refused["rule"] == "--allow-unix-sockets"
    assert "no --allow-unix-sockets" in str(refused["reason"])


def _blocked_pair(channel_fd: int) -> None:
    """In a child: the supervised filter, its listener to the parent, then a datagram socketpair (killed in it)."""
    channel = socket.socket(fileno=channel_fd)
    listener = seccomp.install_supervised()
    socket.send_fds(channel, [b"listener"], [listener])
    os.close(listener)
    socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)


@pytest.mark.parametrize("call", ["socketpair", "socket"])
def test_a_caller_gone_before_its_answer_is_dropped_quietly(call, caplog):
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    code = f"from tests.test_seccomp import _blocked_pair; _blocked_pair({child.fileno()})"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, pass_fds=(child.fileno(),))
    child.close()
    recorder = _Recorder()
    with parent:
        parent.settimeout(30)
        _, fds, _, _ = socket.recv_fds(parent, 16, 1)
    try:
        listener = Listener(fds[0])
        select.select([fds[0]], [], [], 30)
        notification = listener.receive()
        assert notification is not None
        assert classify(notification.arch, notification.nr) is Call.SOCKETPAIR
        process.kill()
        process.wait(timeout=30)
        assert not listener.valid(notification)
        if call == "socket":  # the same notification, answered as a refusal: nobody to refuse, nothing audited
            notification = dataclasses.replace(notification, nr=41)
        with caplog.at_level(logging.DEBUG, logger="arca_monitor.seccomp"):
            Supervisor(listener, recorder).answer(notification)
        assert not listener.reply(notification, error=errno.EACCES)  # over: the kernel says ENOENT
        with pytest.raises(TargetGone):
            TargetMemory(listener, notification)  # (its pid may even name another process by now)
    finally:
        os.close(fds[0])
    assert (recorder.denials, recorder.lines) == (0, [])
    assert all(record.levelno < logging.WARNING and not record.exc_info for record in caplog.records)


def _unsupervised(channel_fd: int) -> None:
    """In a child: the supervised filter, its listener to the parent, then (once the parent closed it) each call."""
    channel = socket.socket(fileno=channel_fd)
    listener = seccomp.install_supervised()
    socket.send_fds(channel, [b"listener"], [listener])
    os.close(listener)
    channel.recv(1)  # the parent has closed the listener: nobody supervises
    seen = {
        "unix": _errno_of(lambda: socket.socket(socket.AF_UNIX)),
        "dgram_pair": _errno_of(lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)),
        "stream_pair": _errno_of(lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)),
        "tcp": _errno_of(lambda: socket.socket(socket.AF_INET)),
    }
    print(json.dumps(seen), flush=True)


def test_without_a_supervisor_the_calls_fail_closed():
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    code = f"from tests.test_seccomp import _unsupervised; _unsupervised({child.fileno()})"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, pass_fds=(child.fileno(),),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.close()
    with parent:
        parent.settimeout(30)
        _, fds, _, _ = socket.recv_fds(parent, 16, 1)
        os.close(fds[0])  # as if the monitor had gone
        parent.send(b"g")
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    # The kernel's answer when no listener is left: ENOSYS; what the filter does not send works as ever.
    assert json.loads(out) == {"unix": errno.ENOSYS, "dgram_pair": errno.ENOSYS, "stream_pair": 0, "tcp": 0}
