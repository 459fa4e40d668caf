"""A trio session run in a thread of its own, for callers that are not trio code.

The blocking API (``sync``), the asyncio API (``aio``) and transparent mode
all reach the monitor through a :class:`Portal`: one daemon thread runs
``trio.run`` with one ``ArcaSession`` on the socket channel, and
:meth:`Portal.submit` starts ``fn(session, *args)`` as a task there, giving
back a ``concurrent.futures.Future``. Submitting goes through trio's
thread-safe ``TrioToken.run_sync_soon``, so any number of threads (or event
loops) may use one portal at once; the session itself is only ever touched
from its own thread.

Resource handling: the thread, the session and its monitor live from
:meth:`Portal.start` to :meth:`Portal.close`; closing cancels every task
still running and waits for the thread. Sockets already handed out stay
open, and read EOF once the monitor is gone.

Error handling: what ``fn`` raises is set on its future, with trio's own
``ClosedResourceError`` (the session has closed) turned into ``OSError``
EBADF, so callers see only OSError subclasses. A task withdrawn with
:meth:`Portal.cancel` ends its future with ``concurrent.futures.CancelledError``.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import socket
import threading
from contextlib import suppress
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

import trio

from .protocol.errors import error_from_errno
from .session import ArcaSession, open_session

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

log = logging.getLogger("arca_control.portal")

T = TypeVar("T")
Args = TypeVarTuple("Args")

#: How long ``start`` waits for the monitor's handshake.
START_TIMEOUT = 30.0

_thread_state = threading.local()


def current_portal() -> Portal | None:
    """The portal whose thread this is (code it runs calls back into it so), or None."""
    portal = getattr(_thread_state, "portal", None)
    return portal if isinstance(portal, Portal) else None


def in_portal_thread() -> bool:
    """Whether the caller is a portal's own thread, which must never wait on a portal."""
    return current_portal() is not None


class Portal:
    """One session in a background trio thread. Build it, then ``start()``; ``close()`` when done."""

    def __init__(self, opener: Callable[[], AbstractAsyncContextManager[ArcaSession]] | None = None) -> None:
        self._opener = opener or (lambda: open_session(socket_channel=True))
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name="arca-portal", daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        # The cancel scope of each running task, by its future.
        self._scopes: dict[object, trio.CancelScope] = {}
        self.session: ArcaSession | None = None

    def start(self) -> None:
        """Run the session's thread and wait until the session is open; raise why it could not open."""
        self._thread.start()
        try:
            # The thread gives up at START_TIMEOUT itself; the margin only covers its exit.
            self._ready.result(timeout=START_TIMEOUT + 5)
        except BaseException:
            self.close()
            raise

    def submit(self, fn: Callable[[ArcaSession, *Args], Awaitable[T]], *args: *Args) -> concurrent.futures.Future[T]:
        """Run ``fn(session, *args)`` in the session's thread; its outcome lands on the future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._token is None or not self._ready.done() or self._ready.exception() is not None:
            future.set_exception(error_from_errno(errno.EBADF, "the arca session is not open"))
            return future
        try:
            self._token.run_sync_soon(self._start_task, future, fn, args)
        except trio.RunFinishedError:
            future.set_exception(error_from_errno(errno.EBADF, "the arca session is closed"))
        return future

    def call(self, fn: Callable[[ArcaSession, *Args], Awaitable[T]], *args: *Args) -> T:
        """``submit`` and wait for the result; an interrupt (Ctrl-C) withdraws the task."""
        if in_portal_thread():
            raise RuntimeError("a portal call from the portal's own thread would wait on itself")
        future = self.submit(fn, *args)
        try:
            return future.result()
        except BaseException:
            if not future.done():
                self.cancel(future)
                future.add_done_callback(discard_result)
            raise

    def cancel(self, future: concurrent.futures.Future[T]) -> None:
        """Withdraw a submitted task: its future ends cancelled, unless it had already finished."""
        if future.cancel() or self._token is None:
            return  # never started
        with suppress(trio.RunFinishedError):  # the session is over: the task is gone with it
            self._token.run_sync_soon(self._cancel_task, future)

    def close(self) -> None:
        """Close the session (and the monitor it spawned), and wait for the thread."""
        if self._token is not None and self._stop is not None:
            with suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._stop.set)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(START_TIMEOUT + 10)

    def forget_after_fork(self) -> None:
        """In a forked child: close our copy of the control channel, so that the parent's
        session ends when the parent ends it (the child's copy would keep it open)."""
        if self.session is not None:
            self.session.forget_after_fork()

    # --- in the session's thread ---------------------------------------------------------

    def _run(self) -> None:
        _thread_state.portal = self
        try:
            trio.run(self._main)
        except BaseException as exc:  # the thread must not die silently: the caller waits on _ready
            if not self._ready.done():
                self._ready.set_exception(exc)
            else:
                log.error("the arca session ended with %r", exc)
        if not self._ready.done():  # the watchdog gave up on the handshake
            self._ready.set_exception(TimeoutError(f"the arca monitor did not answer within {START_TIMEOUT:g} s"))

    async def _main(self) -> None:
        stop = self._stop = trio.Event()
        async with trio.open_nursery() as guard:
            # A monitor that takes the connection and never answers Hello must not hang
            # the caller (in transparent mode: every program, at startup).
            guard.start_soon(self._watchdog, guard.cancel_scope)
            async with self._opener() as session, trio.open_nursery() as nursery:
                self.session, self._nursery = session, nursery
                self._token = trio.lowlevel.current_trio_token()
                self._ready.set_result(None)
                await stop.wait()
                nursery.cancel_scope.cancel()
            guard.cancel_scope.cancel()

    async def _watchdog(self, guard: trio.CancelScope) -> None:
        await trio.sleep(START_TIMEOUT)
        if not self._ready.done():
            guard.cancel()

    def _start_task(
        self,
        future: concurrent.futures.Future[T],
        fn: Callable[[ArcaSession, *Args], Awaitable[T]],
        args: tuple[*Args],
    ) -> None:
        if self._nursery is None or self.session is None or self._stop is None or self._stop.is_set():
            if future.set_running_or_notify_cancel():
                future.set_exception(error_from_errno(errno.EBADF, "the arca session is closed"))
            return
        self._nursery.start_soon(self._task, self.session, future, fn, args)

    async def _task(
        self,
        session: ArcaSession,
        future: concurrent.futures.Future[T],
        fn: Callable[[ArcaSession, *Args], Awaitable[T]],
        args: tuple[*Args],
    ) -> None:
        if not future.set_running_or_notify_cancel():
            return  # cancelled before it started
        try:
            with trio.CancelScope() as scope:
                self._scopes[future] = scope
                try:
                    result = await fn(session, *args)
                except trio.ClosedResourceError as exc:
                    future.set_exception(error_from_errno(errno.EBADF, str(exc) or "the arca session is closed"))
                except Exception as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        finally:
            self._scopes.pop(future, None)
            if not future.done():
                # Withdrawn by Portal.cancel; or the session is closing (its nursery's
                # cancellation passes through our scope): either way nobody may wait on.
                if scope.cancelled_caught:
                    future.set_exception(concurrent.futures.CancelledError())
                else:
                    future.set_exception(error_from_errno(errno.EBADF, "the arca session closed"))

    def _cancel_task(self, future: concurrent.futures.Future[T]) -> None:
        scope = self._scopes.get(future)
        if scope is not None:
            scope.cancel()


def discard_result(future: concurrent.futures.Future[T]) -> None:
    """What a withdrawn call produced anyway: nobody will use it, so close it (a socket)."""
    if future.cancelled() or future.exception() is not None:
        return
    result = future.result()
    if isinstance(result, socket.socket):
        result.close()
