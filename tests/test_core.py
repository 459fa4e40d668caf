"""The sans-IO protocol rules, driven with bytes only: no sockets, no monitor."""

from __future__ import annotations

import errno

import pytest

from arca_control.protocol import errors
from arca_control.protocol.client import ClientCore, KeepAccepted, Reply
from arca_control.protocol.codec import encode
from arca_control.protocol.core import SessionState
from arca_control.protocol.messages import (
    Accept,
    AcceptErr,
    AcceptOk,
    Cancel,
    Connect,
    ConnectionEnd,
    Error,
    Hello,
    HelloOk,
    Listen,
    ListenOk,
)
from arca_control.protocol.server import Incoming, Reject, ServerCore
from arca_control.protocol.wire import Capability

from .conftest import HERE, THERE, ready_client
from .test_fastpath import wrongly_typed


def test_hello_must_come_first_and_only_once():
    core = ClientCore()
    with pytest.raises(errors.LocalProtocolError):
        core.send(Listen(endpoint=HERE))
    core.send(Hello())
    with pytest.raises(errors.LocalProtocolError):  # still waiting for HelloOk
        core.send(Listen(endpoint=HERE))


def test_error_to_hello_closes_the_client():
    core = ClientCore()
    hello = core.send(Hello())[0]
    event = core.receive(encode(Error(request_id=hello.request_id, errno=errno.EPROTONOSUPPORT)), [])
    assert isinstance(event, Reply)
    assert core.state is SessionState.CLOSED


def test_request_ids_are_unique_nonzero_and_wrap():
    core = ready_client()
    core._next_id = 0xFFFFFFFF
    first = core.send(Listen(endpoint=HERE))[0]
    second = core.send(Listen(endpoint=HERE))[0]
    assert (first.request_id, second.request_id) == (0xFFFFFFFF, 1)  # 1 was Hello, answered long ago
    core._next_id = 0xFFFFFFFF
    assert core.send(Listen(endpoint=HERE))[0].request_id == 2  # 0xFFFFFFFF and 1 are pending


def test_replies_match_by_id_in_any_order():
    core = ready_client()
    a = core.send(Listen(endpoint=HERE))[0]
    b = core.send(Listen(endpoint=HERE))[0]
    rb = core.receive(encode(ListenOk(request_id=b.request_id, listener_id=2, local=HERE)), [])
    ra = core.receive(encode(ListenOk(request_id=a.request_id, listener_id=1, local=HERE)), [])
    assert isinstance(ra, Reply)
    assert isinstance(rb, Reply)
    assert (ra.request, rb.request) == (a, b)


@pytest.mark.parametrize(
    ("reply", "fds", "error"),
    [
        (lambda rid: ListenOk(request_id=rid + 100, listener_id=1, local=HERE), [], "unknown request"),
        (lambda rid: AcceptErr(request_id=rid, errno=errno.EBADF), [], "cannot answer"),
        (lambda rid: ListenOk(request_id=rid, listener_id=1, local=HERE), [5], "file descriptors"),
        (lambda rid: Listen(request_id=rid, endpoint=HERE), [], "sent a request"),
    ],
)
def test_client_refuses_replies_that_break_the_rules(reply, fds, error):
    core = ready_client()
    listen = core.send(Listen(endpoint=HERE))[0]
    with pytest.raises(errors.UnexpectedMessage, match=error):
        core.receive(encode(reply(listen.request_id)), fds)


def test_connection_replies_need_two_fds():
    core = ready_client()
    accept = core.send(Accept(listener_id=1))[0]
    ok = AcceptOk(request_id=accept.request_id, connection_id=1, local=HERE, peer=THERE)
    with pytest.raises(errors.UnexpectedMessage):
        core.receive(encode(ok), [])


def test_cancel_turns_a_reply_into_a_late_reply():
    core = ready_client()
    accept = core.send(Accept(listener_id=1))[0]
    cancel = core.cancel(accept.request_id)
    assert isinstance(cancel, Cancel)
    assert cancel.target == accept.request_id
    ok = AcceptOk(request_id=accept.request_id, connection_id=9, local=HERE, peer=THERE)
    assert core.receive(encode(ok), [3, 4]) == KeepAccepted(listener_id=1, reply=ok, fds=[3, 4])
    # Exactly one reply: a second one is a violation.
    with pytest.raises(errors.UnexpectedMessage):
        core.receive(encode(AcceptErr(request_id=accept.request_id, errno=errno.ECANCELED)), [])


def test_only_accept_and_connect_are_withdrawn_on_the_wire():
    core = ready_client()
    listen = core.send(Listen(endpoint=HERE))[0]
    assert core.cancel(listen.request_id) is None
    connect = core.send(Connect(endpoint=THERE))[0]
    assert isinstance(core.cancel(connect.request_id), Cancel)
    assert core.cancel(12345) is None


def test_events_pass_through_and_close_releases_waiters():
    core = ready_client()
    assert core.receive(encode(ConnectionEnd(connection_id=3, status=errno.ECONNRESET)), []) == ConnectionEnd(
        connection_id=3, status=errno.ECONNRESET
    )
    pending = core.send(Accept(listener_id=1))[0]
    assert core.close() == [pending]
    with pytest.raises(errors.LocalProtocolError):
        core.send(Accept(listener_id=1))


# --- the monitor's side ---------------------------------------------------------


def test_server_wants_hello_first():
    core = ServerCore()
    event = core.receive(encode(Listen(request_id=4, endpoint=HERE)))
    assert isinstance(event, Reject)
    assert event.close
    assert event.reply is not None
    assert event.reply.request_id == 4


def test_server_version_mismatch_is_answered_then_closed():
    core = ServerCore()
    frame = bytearray(encode(Hello(request_id=1)))
    frame[7] = 9
    event = core.receive(bytes(frame))
    assert isinstance(event, Reject)
    assert event.close
    assert event.reply is not None
    assert event.reply.errno == errno.EPROTONOSUPPORT
    assert event.reply.request_id == 1


def test_server_answers_bad_frames_and_stays_open_until_the_limit():
    core = ServerCore(max_errors=3)
    assert isinstance(core.receive(encode(Hello(request_id=1))), Incoming)
    listen = encode(Listen(request_id=2, endpoint=HERE))
    for expected_close in (False, False, True):
        event = core.receive(listen + b"junk")
        assert isinstance(event, Reject)
        assert event.reply is not None
        assert event.reply.request_id == 2
        assert event.close is expected_close


def test_server_rules():
    core = ServerCore()
    core.receive(encode(Hello(request_id=1)))
    second = core.receive(encode(Hello(request_id=2)))
    assert isinstance(second, Reject)
    assert not second.close
    assert "second Hello" in second.reason
    reply = core.receive(encode(ListenOk(request_id=3, listener_id=1, local=HERE)))
    assert isinstance(reply, Reject)
    assert reply.reply is not None
    assert reply.reply.request_id == 3
    with_fds = core.receive(encode(Accept(request_id=4, listener_id=1)), fds_count=1)
    assert isinstance(with_fds, Reject)
    assert with_fds.reply is not None
    assert with_fds.reply.request_id == 4
    unreadable = core.receive(b"\x01\x02")
    assert isinstance(unreadable, Reject)
    assert unreadable.reply is None
    assert unreadable.close


def test_server_oversize_flag_keeps_the_request_id():
    core = ServerCore()
    core.receive(encode(Hello(request_id=1)))
    event = core.receive(encode(Accept(request_id=8, listener_id=1)), truncated=True)
    assert isinstance(event, Reject)
    assert event.reply is not None
    assert event.reply.request_id == 8
    assert event.reply.errno == errno.EMSGSIZE


def test_hello_ok_offers_the_common_capabilities():
    core = ServerCore(max_payload=1000)
    hello = Hello(request_id=1, capabilities=Capability(0xFF))
    reply = core.hello_reply(hello)
    assert reply.capabilities == 0b111
    assert reply.max_payload == 1000


def test_a_request_that_cannot_be_encoded_registers_nothing():
    core = ready_client()
    with pytest.raises(errors.LocalProtocolError):
        # Endpoint refuses port 70000 itself; a plain pair reaches the encoder.
        core.send(wrongly_typed(Listen(endpoint=HERE), endpoint=("127.0.0.1", 70000)))
    assert core.close() == []


def test_send_limit_comes_from_hello_ok_and_receiving_is_not_limited_by_it():
    core = ClientCore()
    hello, frame = core.send(Hello())
    assert frame == encode(hello)
    core.receive(encode(HelloOk(request_id=hello.request_id, max_payload=64)), [])
    assert core.send_limit == 64
    accept, _ = core.send(Accept(listener_id=1))
    reply = Error.make(accept.request_id, errno.EIO, "x" * 255)  # a payload far over 64 bytes
    assert isinstance(core.receive(encode(reply), []), Reply)


def test_granted_capabilities_are_remembered():
    core = ServerCore()
    core.receive(encode(Hello(request_id=1, capabilities=Capability(0))))
    assert core.hello_reply(Hello(request_id=1, capabilities=Capability(0))).capabilities == 0
    assert not core.capabilities
