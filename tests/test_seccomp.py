"""The seccomp filter: no new AF_UNIX sockets, socketpair and other families untouched, inherited by children.

A filter cannot be removed, so every real check runs in a child process:
``_observe`` installs the filter (or not, for the comparison), tries each
call and prints what happened as JSON; the test reads it. The filter's
program is also run through a small BPF interpreter here, for every ABI in
its table, including the ones this machine cannot run.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import socket
import subprocess
import sys

import pytest

from arca_monitor import seccomp
from arca_monitor.seccomp import ABIS, Instruction, build_filter

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


def run_bpf(program: list[Instruction], arch: int, nr: int, arg0: int = 0) -> int:
    """What the program returns for one system call: a classic-BPF interpreter for the three opcodes used."""
    words = {0: nr, 4: arch, 16: arg0 & 0xFFFFFFFF, 20: arg0 >> 32}
    accumulator = 0
    pc = 0
    for _ in range(len(program)):  # no backward jumps: each instruction runs at most once
        code, jt, jf, k = program[pc]
        if code == 0x20:  # load word
            accumulator = words[k]
            pc += 1
        elif code == 0x15:  # jump if equal
            pc += 1 + (jt if accumulator == k else jf)
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
