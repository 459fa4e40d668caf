"""The kernel's seccomp user-notification interface (seccomp_unotify(2)), through ioctl on a listener descriptor.

A filter installed with ``SECCOMP_FILTER_FLAG_NEW_LISTENER``
(:func:`arca_monitor.seccomp.install_supervised`) sends each call it marks
``SECCOMP_RET_USER_NOTIF`` here: the calling thread waits in the kernel while
its supervisor :meth:`Listener.receive` s the call (a :class:`Notification`),
may :meth:`Listener.add_fd` descriptors into the caller and write its memory
(:class:`TargetMemory`), and then :meth:`Listener.reply` s the call's result.

The layouts are linux/seccomp.h's: ``struct seccomp_notif`` (id u64, pid u32,
flags u32, then ``struct seccomp_data``: nr i32, arch u32,
instruction_pointer u64, args u64[6]), ``struct seccomp_notif_resp`` (id u64,
val i64, error i32, flags u32) and ``struct seccomp_notif_addfd`` (id u64,
flags u32, srcfd u32, newfd u32, newfd_flags u32). The kernel may one day use
larger ones: buffers are as large as ``SECCOMP_GET_NOTIF_SIZES`` says, the
tail zero.

Nothing here ever answers with ``SECCOMP_USER_NOTIF_FLAG_CONTINUE``: a
decision about memory the caller can change could be raced (TOCTOU), and an
error or a result the supervisor made itself cannot.

Error handling: a call whose caller has gone (killed, or interrupted by a
signal: the kernel then restarts or fails it itself) makes :meth:`receive`
return None, :meth:`reply` return False and :meth:`add_fd` raise
:class:`TargetGone`; :class:`TargetMemory` raises TargetGone once the call's id
is no longer valid (its pid may name another process by then), OSError if the
memory cannot be opened or written. Resource handling: a Listener never owns
its descriptor.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import struct
from dataclasses import dataclass
from typing import Self

from .seccomp import SECCOMP_SYSCALL

#: linux/seccomp.h: seccomp(2) operation, ioctl magic, flags.
SECCOMP_GET_NOTIF_SIZES = 3
SECCOMP_IOC_MAGIC = ord("!")
SECCOMP_ADDFD_FLAG_SETFD = 1 << 0
#: What readlink(2) shows for a listener descriptor.
LISTENER_LINK = "anon_inode:seccomp notify"

NOTIF = struct.Struct("<QIIiIQ6Q")
RESPONSE = struct.Struct("<QqiI")
ADDFD = struct.Struct("<QIIII")
SIZES = struct.Struct("<HHH")
ID = struct.Struct("<Q")

# asm-generic/ioctl.h
_IOC_WRITE = 1
_IOC_READ = 2


def ioc(direction: int, kind: int, number: int, size: int) -> int:
    """The _IOC macro: direction (2 bits), size (14), type (8), number (8)."""
    return direction << 30 | size << 16 | kind << 8 | number


#: SECCOMP_IOWR(0, struct seccomp_notif), SECCOMP_IOWR(1, struct seccomp_notif_resp),
#: SECCOMP_IOW(2, __u64), SECCOMP_IOW(3, struct seccomp_notif_addfd).
NOTIF_RECV = ioc(_IOC_READ | _IOC_WRITE, SECCOMP_IOC_MAGIC, 0, NOTIF.size)
NOTIF_SEND = ioc(_IOC_READ | _IOC_WRITE, SECCOMP_IOC_MAGIC, 1, RESPONSE.size)
NOTIF_ID_VALID = ioc(_IOC_WRITE, SECCOMP_IOC_MAGIC, 2, ID.size)
NOTIF_ADDFD = ioc(_IOC_WRITE, SECCOMP_IOC_MAGIC, 3, ADDFD.size)


class TargetGone(Exception):
    """The call a notification stands for is over: its caller was killed or interrupted."""


@dataclass(frozen=True)
class Notification:
    """One call waiting for its answer: ``pid`` in the receiver's PID namespace; ``args`` as registers held them."""

    id: int
    pid: int
    flags: int
    nr: int
    arch: int
    instruction_pointer: int
    args: tuple[int, int, int, int, int, int]

    @classmethod
    def unpack(cls, data: bytes | bytearray) -> Notification:
        id_, pid, flags, nr, arch, ip, *args = NOTIF.unpack_from(data)
        a0, a1, a2, a3, a4, a5 = args
        return cls(id_, pid, flags, nr, arch, ip, (a0, a1, a2, a3, a4, a5))


def notif_sizes() -> tuple[int, int, int]:
    """The kernel's sizes of struct seccomp_notif, seccomp_notif_resp and seccomp_data (SECCOMP_GET_NOTIF_SIZES)."""
    buffer = ctypes.create_string_buffer(SIZES.size)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(ctypes.c_long(SECCOMP_SYSCALL[os.uname().machine]), ctypes.c_long(SECCOMP_GET_NOTIF_SIZES),
                    ctypes.c_long(0), buffer) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"seccomp(SECCOMP_GET_NOTIF_SIZES): {os.strerror(code)}")
    notif, response, data = SIZES.unpack(buffer.raw)
    return notif, response, data


def is_listener(fd: int) -> bool:
    """Whether ``fd`` is a seccomp listener descriptor."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == LISTENER_LINK
    except OSError:
        return False


class Listener:
    """The supervisor's side of one listener descriptor (see the module's docstring)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        notif, response, _ = notif_sizes()
        self._notif_size = max(notif, NOTIF.size)
        self._response_size = max(response, RESPONSE.size)

    def pending(self) -> bool | None:
        """True if a notification waits, False if none, None if the filter has no user left (POLLHUP)."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        events = sum(event for _, event in poller.poll(0))
        if events & select.POLLIN:
            return True
        return None if events & (select.POLLHUP | select.POLLERR) else False

    def receive(self) -> Notification | None:
        """The next notification (call it when :meth:`pending`); None if its caller went away meanwhile."""
        buffer = bytearray(self._notif_size)  # zeroed: the kernel refuses a buffer with anything in it
        try:
            fcntl.ioctl(self.fd, NOTIF_RECV, buffer, True)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINTR):
                return None
            raise
        return Notification.unpack(buffer)

    def reply(self, notification: Notification, *, value: int = 0, error: int = 0) -> bool:
        """Answer the call: ``value`` as its result, or ``error`` (a positive errno) as its failure; False if it
        was over already."""
        buffer = bytearray(self._response_size)
        RESPONSE.pack_into(buffer, 0, notification.id, value, -error if error else 0, 0)
        try:
            fcntl.ioctl(self.fd, NOTIF_SEND, buffer, True)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def valid(self, notification: Notification) -> bool:
        """Whether the call still waits (so its pid still names its caller)."""
        try:
            fcntl.ioctl(self.fd, NOTIF_ID_VALID, bytearray(ID.pack(notification.id)), True)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def add_fd(self, notification: Notification, fd: int, *, cloexec: bool) -> int:
        """A copy of ``fd`` in the caller, at its lowest free number (which is returned); TargetGone if it is over."""
        buffer = bytearray(ADDFD.pack(notification.id, 0, fd, 0, os.O_CLOEXEC if cloexec else 0))
        try:
            return int(fcntl.ioctl(self.fd, NOTIF_ADDFD, buffer, True))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ESRCH):
                raise TargetGone(f"pid {notification.pid}: the call is over") from None
            raise


class TargetMemory:
    """The memory of a notification's caller, opened, then checked to be still its (man 2 seccomp_unotify)."""

    def __init__(self, listener: Listener, notification: Notification) -> None:
        try:
            self._fd = os.open(f"/proc/{notification.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            if not listener.valid(notification):
                raise TargetGone(f"pid {notification.pid}: the call is over") from None
            raise
        if not listener.valid(notification):
            os.close(self._fd)
            raise TargetGone(f"pid {notification.pid}: the call is over")

    def read(self, address: int, size: int) -> bytes:
        data = os.pread(self._fd, size, address)
        if len(data) != size:
            raise OSError(errno.EFAULT, f"{size} bytes at {address:#x}: {len(data)} read")
        return data

    def write(self, address: int, data: bytes) -> None:
        if os.pwrite(self._fd, data, address) != len(data):
            raise OSError(errno.EFAULT, f"{len(data)} bytes at {address:#x}: short write")

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
