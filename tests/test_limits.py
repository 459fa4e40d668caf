"""Per-session limits: each configurable, each answered with its own clear error, none fatal."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

import arca_control
from arca_monitor.config import Config, limits

from .conftest import blocking_client


def assert_limit(exc: BaseException, code: int, option: str) -> None:
    assert isinstance(exc, OSError) and exc.errno == code
    assert "limit reached" in str(exc) and option in str(exc)


async def test_listeners_per_session():
    async with arca_control.open_session("--max-listeners", "2") as session:
        first = await session.listen("127.0.0.1", 0)
        await session.listen("127.0.0.1", 0)
        with pytest.raises(OSError) as caught:
            await session.listen("127.0.0.1", 0)
        assert_limit(caught.value, errno.EMFILE, "--max-listeners")
        await first.aclose()
        await session.listen("127.0.0.1", 0)  # room again


async def test_connections_per_session_on_connect_and_on_accept():
    async with arca_control.open_session("--max-connections", "2") as session:
        listener = await session.listen("127.0.0.1", 0)
        client = await session.connect(*listener.local)
        server = await listener.accept()
        with pytest.raises(OSError) as caught:
            await session.connect(*listener.local)
        assert_limit(caught.value, errno.EMFILE, "--max-connections")
        # An outside client: the Accept waiting for it hears the limit, and the
        # connection stays in the kernel's queue rather than being dropped.
        outside = await trio.to_thread.run_sync(blocking_client, listener.local)
        with pytest.raises(OSError) as caught:
            await listener.accept()
        assert_limit(caught.value, errno.EMFILE, "--max-connections")
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
            with pytest.raises(OSError) as caught:
                await one.accept()  # a third on one listener
            assert_limit(caught.value, errno.ENOBUFS, "--max-accepts-per-listener")
            nursery.start_soon(two.accept)  # the session's third
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(OSError) as caught:
                await two.accept()  # the session's fourth
            assert_limit(caught.value, errno.ENOBUFS, "(--max-accepts)")
            nursery.cancel_scope.cancel()


async def test_requests_in_flight_per_session(stalled_address):
    async with arca_control.open_session("--max-in-flight", "2") as session:
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(session.connect, *stalled_address)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(OSError) as caught:
                await session.connect(*stalled_address)
            assert_limit(caught.value, errno.EAGAIN, "--max-in-flight")
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
        assert getattr(defaults, f.name) > 0 and f.metadata["errno"] and f.metadata["what"]
    with pytest.raises(ValueError):
        Config(max_payload=10)


def test_protocol_md_documents_every_option():
    from pathlib import Path

    import dataclasses

    from arca_monitor.config import option_name

    spec = (Path(__file__).resolve().parent.parent / "PROTOCOL.md").read_text()
    for f in dataclasses.fields(Config):
        if f.name != "connect_timeout":
            assert f"`--{option_name(f.name)}`" in spec, f.name
