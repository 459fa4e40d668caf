"""The monitor's protocol rules (ServerCore), driven with frames only: no sockets, no monitor."""

from __future__ import annotations

import errno
from typing import TypeVar

import pytest

from arca_control.protocol import errors
from arca_control.protocol.codec import encode
from arca_control.protocol.core import SessionState
from arca_control.protocol.messages import (
    Abort,
    Accept,
    AcceptErr,
    AcceptOk,
    AcceptSocketOk,
    AnyRequest,
    Cancel,
    CloseListener,
    CloseListenerOk,
    Connect,
    ConnectErr,
    ConnectionEnd,
    ConnectionReady,
    ConnectOk,
    ControlReply,
    Error,
    Hello,
    HelloOk,
    Listen,
    ListenErr,
    ListenOk,
    MessageType,
    Resolve,
    Stats,
    UdpBind,
)
from arca_control.protocol.server import Incoming, Owed, Refuse, Reject, ServerCore, Withdraw, cancelled_reply
from arca_control.protocol.wire import Capability

from .conftest import HERE, THERE
from .test_fastpath import wrongly_typed

ALL = Capability.TCP | Capability.UDP | Capability.SOCKET_CHANNEL

E = TypeVar("E", Incoming, Refuse, Withdraw, Reject)
R = TypeVar("R", bound=AnyRequest)
C = TypeVar("C", bound=ConnectionReady)


def event_of(kind: type[E], core: ServerCore, frame: bytes, *, truncated: bool = False) -> E:
    """What ``core`` made of ``frame``, which must be a ``kind``."""
    event = core.receive(frame, truncated=truncated)
    assert isinstance(event, kind), event
    return event


def incoming(core: ServerCore, request: R) -> R:
    assert event_of(Incoming, core, encode(request)).request == request
    return request


def ready(capabilities: Capability = Capability.TCP | Capability.UDP) -> ServerCore:
    core = ServerCore()
    core.send(core.hello_reply(incoming(core, Hello(request_id=1, capabilities=capabilities))))
    return core


def target_of(core: ServerCore, cancel: Cancel) -> Accept | Connect:
    """The request a Cancel withdraws, which must be one."""
    target = event_of(Withdraw, core, encode(cancel)).target
    assert target is not None
    return target


def refusal(core: ServerCore, frame: bytes, *, truncated: bool = False) -> Error:
    """The reply the core chose itself for ``frame``: a Refuse's or a Reject's."""
    event = core.receive(frame, truncated=truncated)
    assert isinstance(event, (Refuse, Reject)), event
    assert event.reply is not None
    return event.reply


def connection(cls: type[C], rid: int) -> C:
    return cls(request_id=rid, connection_id=rid, local=HERE, peer=THERE)


# --- the handshake ----------------------------------------------------------------------


def test_hello_is_pending_until_its_hello_ok_and_grants_the_common_capabilities():
    core = ServerCore(max_payload=1000)
    hello = incoming(core, Hello(request_id=7, capabilities=Capability(0xFF)))
    assert core.state is SessionState.READY
    assert core.capabilities == ALL
    assert [owed.request_id for owed in core.owed()] == [7]
    with pytest.raises(errors.LocalProtocolError, match="handshake"):
        core.send(HelloOk(request_id=7, capabilities=Capability.TCP, max_payload=1000))  # not what was agreed
    frame = core.send(core.hello_reply(hello))
    assert frame == encode(HelloOk(request_id=7, capabilities=ALL, max_payload=1000))
    assert core.owed() == []


def test_a_bad_hello_is_answered_and_closes_and_nothing_more_is_read():
    core = ServerCore()
    frame = bytearray(encode(Hello(request_id=5)))
    frame[7] = 9
    event = event_of(Reject, core, bytes(frame))
    assert event.close
    assert event.reply is not None
    assert event.reply.errno == errno.EPROTONOSUPPORT
    assert core.owed() == [Owed(5, None, event.reply)]
    core.send(event.reply)  # still owed after the close
    with pytest.raises(errors.LocalProtocolError):
        core.receive(encode(Hello(request_id=6)))


# --- capabilities and request ids ------------------------------------------------------------


def test_a_request_needing_a_capability_not_granted_is_refused_by_the_core():
    core = ready(Capability.TCP)
    reply = event_of(Refuse, core, encode(UdpBind(request_id=2, endpoint=HERE))).reply
    assert reply.errno == errno.EOPNOTSUPP
    assert "UDP" in reply.message
    assert 2 not in core.pending  # nothing to carry out
    core.send(reply)
    assert core.owed() == []
    assert core.errors == {errno.EOPNOTSUPP: 1}
    nothing = ready(Capability(0))
    assert refusal(nothing, encode(Listen(request_id=2, endpoint=HERE))).errno == errno.EOPNOTSUPP


def test_an_id_still_pending_is_refused_with_ebusy_and_both_replies_are_owed():
    core = ready()
    accept = incoming(core, Accept(request_id=3, listener_id=1))
    again = event_of(Refuse, core, encode(Connect(request_id=3, endpoint=THERE)))
    assert (again.reply.request_id, again.reply.errno) == (3, errno.EBUSY)
    assert [(owed.request, owed.reply) for owed in core.owed()] == [(again.request, again.reply), (accept, None)]
    core.send(again.reply)
    core.send(connection(AcceptOk, 3), 2)  # the Accept's own reply is still owed
    assert core.owed() == []
    incoming(core, Accept(request_id=3, listener_id=1))  # the id is free again


def test_cancel_resolves_to_the_request_to_withdraw_once():
    core = ready()
    accept = incoming(core, Accept(request_id=3, listener_id=1))
    event = core.receive(encode(Cancel(request_id=4, target=3)))
    assert event == Withdraw(Cancel(request_id=4, target=3), accept)
    assert core.receive(encode(Cancel(request_id=5, target=3))) == Withdraw(Cancel(request_id=5, target=3), None)
    assert list(core.pending) == [3]  # a Cancel is owed nothing; its target still one reply
    core.send(cancelled_reply(accept))
    assert core.owed() == []
    # Nothing to withdraw: answered already, unknown, or a kind Cancel cannot withdraw.
    incoming(core, Listen(request_id=8, endpoint=HERE))
    for target in (3, 99, 8):
        assert event_of(Withdraw, core, encode(Cancel(request_id=9, target=target))).target is None


def test_a_reply_already_under_way_stands_after_a_cancel():
    core = ready()
    connect = incoming(core, Connect(request_id=3, endpoint=THERE))
    assert target_of(core, Cancel(request_id=4, target=3)) == connect
    core.send(connection(ConnectOk, 3), 2)  # connected before the Cancel could act
    with pytest.raises(errors.LocalProtocolError, match="owed no reply"):
        core.send(cancelled_reply(connect))  # exactly one reply
    assert not core.errors


def test_ecanceled_only_for_what_a_cancel_withdrew():
    core = ready()
    connect = incoming(core, Connect(request_id=3, endpoint=THERE))
    with pytest.raises(errors.LocalProtocolError, match="no Cancel withdrew"):
        core.send(cancelled_reply(connect))
    assert 3 in core.pending


def test_every_accept_queued_on_a_closed_listener_gets_its_accept_err():
    core = ready()
    for rid in (3, 4, 5):
        incoming(core, Accept(request_id=rid, listener_id=1))
    incoming(core, CloseListener(request_id=6, listener_id=1))
    for rid in (3, 4, 5):
        core.send(AcceptErr.make(rid, errno.EBADF, "listener closed"))
    core.send(CloseListenerOk(request_id=6, listener_id=1))
    assert core.owed() == []
    assert core.errors == {errno.EBADF: 3}


# --- send() checks every reply ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "fds", "match"),
    [
        (ListenOk(request_id=99, listener_id=1, local=HERE), 0, "owed no reply"),
        (ListenOk(request_id=3, listener_id=1, local=HERE), 0, "cannot answer Accept"),
        (ListenErr(request_id=3, errno=errno.EIO), 0, "cannot answer Accept"),
        (connection(AcceptOk, 3), 1, "file descriptors"),
        (connection(AcceptSocketOk, 3), 1, "without SOCKET_CHANNEL"),
        (ConnectionEnd(connection_id=1), 1, "file descriptors"),
        (AcceptErr(request_id=3, errno=errno.ECANCELED), 0, "no Cancel withdrew"),
    ],
)
def test_send_refuses_an_illegal_reply_and_changes_nothing(reply: ControlReply, fds: int, match: str) -> None:
    core = ready()
    incoming(core, Accept(request_id=3, listener_id=1))
    with pytest.raises(errors.LocalProtocolError, match=match):
        core.send(reply, fds)
    assert list(core.pending) == [3]
    assert not core.errors


def test_the_socket_forms_only_in_a_session_granted_the_socket_channel():
    core = ready(Capability.TCP | Capability.SOCKET_CHANNEL)
    incoming(core, Accept(request_id=3, listener_id=1))
    with pytest.raises(errors.LocalProtocolError, match="with SOCKET_CHANNEL"):
        core.send(connection(AcceptOk, 3), 2)
    core.send(connection(AcceptSocketOk, 3), 1)


def test_an_unencodable_reply_leaves_the_request_owed_and_the_internal_error_may_answer_it():
    core = ready()
    incoming(core, Listen(request_id=3, endpoint=HERE))
    with pytest.raises(errors.LocalProtocolError):
        # Endpoint refuses port 70000 itself; a plain pair reaches the encoder.
        core.send(wrongly_typed(ListenOk(request_id=3, listener_id=1, local=HERE), local=("127.0.0.1", 70000)))
    assert core.owes(3)
    core.send(Error.make(3, errno.EIO, "internal error"))
    assert not core.owes(3)
    assert core.errors == {errno.EIO: 1}


def test_a_bad_frame_is_owed_its_error_or_the_internal_error_and_nothing_else():
    core = ready()
    assert not event_of(Reject, core, encode(Listen(request_id=9, endpoint=HERE)) + b"x").close
    with pytest.raises(errors.LocalProtocolError):
        core.send(Error.make(9, errno.EBADMSG, "another errno"))
    core.send(Error.make(9, errno.EIO, "internal error"))
    assert core.owed() == []


def test_events_pass_with_no_descriptors():
    core = ready()
    assert core.send(ConnectionEnd(connection_id=4, status=errno.ECONNRESET)) == encode(
        ConnectionEnd(connection_id=4, status=errno.ECONNRESET)
    )


def test_bad_frames_close_the_session_at_the_limit():
    core = ServerCore(max_errors=2)
    core.receive(encode(Hello(request_id=1)))
    first = event_of(Reject, core, b"\x70\x00\x00\x09\x00\x00\x00")
    second = event_of(Reject, core, b"\x70\x00\x00\x0a\x00\x00\x00")
    assert (first.close, second.close) == (False, True)
    assert core.state is SessionState.CLOSED


# --- the counters ------------------------------------------------------------------------------


def test_every_error_reply_sent_is_counted_by_errno_and_requests_only_when_they_decoded():
    core = ready(Capability.TCP)
    send = core.send
    # AcceptErr: an unknown listener, the queue of a closed one, and ECANCELED.
    for rid in (2, 3, 4):
        incoming(core, Accept(request_id=rid, listener_id=1))
    send(AcceptErr.make(2, errno.EBADF, "no listener 1"))
    incoming(core, CloseListener(request_id=5, listener_id=1))
    send(AcceptErr.make(3, errno.EBADF, "listener closed"))
    send(CloseListenerOk(request_id=5, listener_id=1))
    send(cancelled_reply(target_of(core, Cancel(request_id=6, target=4))))
    # ConnectErr ECANCELED.
    incoming(core, Connect(request_id=7, endpoint=THERE))
    send(cancelled_reply(target_of(core, Cancel(request_id=8, target=7))))
    # Error EBUSY and EOPNOTSUPP, made by the core.
    incoming(core, Accept(request_id=9, listener_id=2))
    send(refusal(core, encode(Accept(request_id=9, listener_id=2))))
    send(refusal(core, encode(UdpBind(request_id=10, endpoint=HERE))))
    # Error for bad frames: EBADMSG, EPROTO, EMSGSIZE.
    for frame, truncated in ((b"\x70\x00\x00\x0b\x00\x00\x00", False),
                             (encode(Abort(request_id=12, connection_id=1)) + b"x", False),
                             (encode(Resolve(request_id=13, name="x")), True)):
        send(refusal(core, frame, truncated=truncated))
    # CloseListener's and Abort's EBADF.
    incoming(core, CloseListener(request_id=14, listener_id=1))
    send(Error.make(14, errno.EBADF, "no listener 1"))
    incoming(core, Abort(request_id=15, connection_id=1))
    send(Error.make(15, errno.EBADF, "no connection 1"))
    stats = incoming(core, Stats(request_id=16))
    reply = core.stats_reply(stats, listeners=1, connections=2, datagram_sockets=3, bytes_up=4, bytes_down=5, denials=6)
    assert dict(reply.errors) == {
        errno.EBADF: 4, errno.ECANCELED: 2, errno.EBUSY: 1, errno.EOPNOTSUPP: 1,
        errno.EBADMSG: 1, errno.EPROTO: 1, errno.EMSGSIZE: 1,
    }
    # Every request that decoded, refused ones and Cancels included; the three bad frames not.
    assert dict(reply.requests) == {
        MessageType.HELLO: 1, MessageType.ACCEPT: 5, MessageType.CLOSE_LISTENER: 2, MessageType.CANCEL: 2,
        MessageType.CONNECT: 1, MessageType.UDP_BIND: 1, MessageType.ABORT: 1, MessageType.STATS: 1,
    }
    assert (reply.listeners, reply.connections, reply.datagram_sockets, reply.bytes_up, reply.bytes_down,
            reply.denials) == (1, 2, 3, 4, 5, 6)
    send(reply)
    assert [owed.request for owed in core.owed()] == [Accept(request_id=9, listener_id=2)]  # still queued


# --- a bystander's view: the live fuzzer ---------------------------------------------------------


def test_a_bystander_checks_the_monitors_frames_with_observe():
    core = ServerCore()
    core.receive(encode(Hello(request_id=1)))
    assert core.observe(encode(HelloOk(request_id=1, capabilities=Capability.TCP | Capability.UDP))) == HelloOk(
        request_id=1, capabilities=Capability.TCP | Capability.UDP
    )
    core.receive(encode(Connect(request_id=2, endpoint=THERE)))
    core.receive(encode(Cancel(request_id=3, target=2)))
    assert [owed.request_id for owed in core.owed()] == [2]  # still owed: its reply, or ECANCELED
    assert isinstance(core.observe(encode(ConnectErr.make(2, errno.ECANCELED, "cancelled"))), ConnectErr)
    assert core.owed() == []
    with pytest.raises(errors.LocalProtocolError):
        core.observe(encode(ConnectErr.make(2, errno.ECANCELED, "again")))
    with pytest.raises(errors.LocalProtocolError):
        core.observe(encode(Listen(request_id=4, endpoint=HERE)))  # the monitor sent a request
    with pytest.raises(errors.RemoteProtocolError):
        core.observe(b"\x81\x00")
