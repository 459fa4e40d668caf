"""Operations in flight for the broker: a slot counted against ``--max-in-flight``, and a connect not yet settled."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

import trio

from . import net

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable


class Slot:
    """One operation in flight (a connect, a lookup), counted against ``--max-in-flight`` until released."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        """Stop counting it; a second call does nothing."""
        if self._release is not None:
            self._release()
            self._release = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Connecting:
    """A connect the broker allowed and began, which the kernel has not settled yet.

    Resource handling: owns ``sock`` until :meth:`finish` returns it (the
    caller owns it then) or fails (it is closed then, cancellation included).
    Holds its in-flight slot until then.
    """

    def __init__(self, sock: socket.socket, slot: Slot, default_seconds: float) -> None:
        self.sock = sock
        self._slot = slot
        self._default_seconds = default_seconds

    async def finish(self, seconds: float | None = None) -> socket.socket:
        """The connected socket, within ``seconds`` (None: ``--connect-timeout``); raises OSError (ETIMEDOUT, ...)."""
        try:
            await net.finish_connection(self.sock, seconds or self._default_seconds)
        except BaseException:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
            raise
        finally:
            self._slot.release()
        return self.sock
