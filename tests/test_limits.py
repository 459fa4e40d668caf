"""Per-session limits: each configurable, each answered with its own clear error, none fatal."""

from __future__ import annotations

import dataclasses
import errno
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

import arca_control
from arca_monitor.config import Config, limits, option_name

from .conftest import blocking_client, errno_is

if TYPE_CHECKING:
    from contextlib import AbstractContextManager


def raises_limit(code: int, option: str) -> AbstractContextManager[pytest.ExceptionInfo[OSError]]:
    """The limit's error: its errno, "limit reached" and the option that sets it."""
    return pytest.raises(OSError, match=f"limit reached.*{re.escape(option)}", check=errno_is(code))


async def test_listeners_per_session():
    async with arca_control.open_session("--max-listeners", "2") as session:
        first = await session.listen("127.0.0.1", 0)
        await session.listen("127.0.0.1", 0)
        with raises_limit(errno.EMFILE, "--max-listeners"):
            await session.listen("127.0.0.1", 0)
        await first.aclose()
        await session.listen("127.0.0.1", 0)  # room again


async def test_connections_per_session_on_connect_and_on_accept():
    async with arca_control.open_session("--max-connections", "2") as session:
        listener = await session.listen("127.0.0.1", 0)
        client = await session.connect(*listener.local)
        server = await listener.accept()
        with raises_limit(errno.EMFILE, "--max-connections"):
            await session.connect(*listener.local)
        # An outside client: the Accept waiting for it hears the limit, and the
        # connection stays in the kernel's queue rather than being dropped.
        outside = await trio.to_thread.run_sync(blocking_client, listener.local)
        with raises_limit(errno.EMFILE, "--max-connections"):
            await listener.accept()
        await client.aclose()
        await server.aclose()
        with trio.fail_after(5):
            while True:  # the relays close their sockets a moment after the streams
                try:
                    stream = await listener.accept()
                    break
                except OSError:
                    await trio.sleep(0.02)
        assert stream.peer == outside.getsockname()
        outside.close()


async def test_pending_accepts_per_listener_and_per_session():
    async with arca_control.open_session("--max-accepts-per-listener", "2", "--max-accepts", "3") as session:
        one = await session.listen("127.0.0.1", 0)
        two = await session.listen("127.0.0.1", 0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one.accept)
            nursery.start_soon(one.accept)
            await trio.testing.wait_all_tasks_blocked()  # both sent; the monitor reads in order
            with raises_limit(errno.ENOBUFS, "--max-accepts-per-listener"):
                await one.accept()  # a third on one listener
            nursery.start_soon(two.accept)  # the session's third
            await trio.testing.wait_all_tasks_blocked()
            with raises_limit(errno.ENOBUFS, "(--max-accepts)"):
                await two.accept()  # the session's fourth
            nursery.cancel_scope.cancel()


async def test_requests_in_flight_per_session(stalled_address: tuple[str, int]):
    async with arca_control.open_session("--max-in-flight", "2") as session:
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(session.connect, *stalled_address)
            await trio.testing.wait_all_tasks_blocked()
            with raises_limit(errno.EAGAIN, "--max-in-flight"):
                await session.connect(*stalled_address)
            nursery.cancel_scope.cancel()
        # Cancelling the two withdrew them: there is room again.
        listener = await session.listen("127.0.0.1", 0)
        with trio.fail_after(5):
            while True:
                try:
                    await (await session.connect(*listener.local)).aclose()
                    break
                except BlockingIOError:
                    await trio.sleep(0.02)


def test_every_limit_has_a_safe_default_an_option_and_an_errno():
    defaults = Config()
    for f in limits():
        assert getattr(defaults, f.name) > 0
        assert f.metadata["errno"]
        assert f.metadata["what"]
    with pytest.raises(ValueError, match="--max-payload must be between"):
        Config(max_payload=10)


def test_protocol_md_documents_every_option():
    spec = (Path(__file__).resolve().parent.parent / "PROTOCOL.md").read_text()
    for f in dataclasses.fields(Config):
        if f.name != "connect_timeout":
            assert f"`--{option_name(f.name)}`" in spec, f.name
