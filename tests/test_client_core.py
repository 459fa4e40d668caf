"""The guest's sans-IO core: what it decides for replies nobody waits for, and the reply types
each request declares. Bytes and plain objects only: no sockets, no monitor."""

from __future__ import annotations

import errno
import types

import pytest

from arca_control.protocol import errors
from arca_control.protocol.client import (
    CloseOrphanListener,
    Discard,
    KeepAccepted,
    Reply,
)
from arca_control.protocol.codec import encode
from arca_control.protocol.messages import (
    ERROR_REPLY,
    REPLIES,
    Accept,
    AcceptErr,
    AcceptOk,
    AcceptSocketOk,
    Cancel,
    Connect,
    ConnectErr,
    ConnectOk,
    ConnectSocketOk,
    ControlRequest,
    Error,
    GetOption,
    Listen,
    ListenErr,
    ListenOk,
    Ok,
    OptionValue,
    Resolve,
    ResolveErr,
    ResolveOk,
    Stats,
    StatsOk,
    UdpBind,
    UdpBindOk,
)
from arca_control.protocol.wire import GaiError, OptionTarget

from .conftest import HERE, THERE, ready_client

# --- late replies: what comes after the guest gave up is kept or closed, never leaked ------------


def test_a_late_accepted_connection_is_kept_for_its_listener():
    core = ready_client()
    accept, _ = core.send(Accept(listener_id=7))
    assert core.cancel(accept.request_id) is not None  # an Accept is withdrawn on the wire
    assert (core.pending, core.abandoned) == (0, 1)
    ok = AcceptOk(request_id=accept.request_id, connection_id=3, local=HERE, peer=THERE)
    assert core.receive(encode(ok), [10, 11]) == KeepAccepted(listener_id=7, reply=ok, fds=[10, 11])
    assert (core.pending, core.abandoned) == (0, 0)


def test_a_late_socket_channel_connection_is_kept_too():
    core = ready_client()
    accept, _ = core.send(Accept(listener_id=7))
    core.cancel(accept.request_id)
    ok = AcceptSocketOk(request_id=accept.request_id, connection_id=3, local=HERE, peer=THERE)
    assert core.receive(encode(ok), [10]) == KeepAccepted(listener_id=7, reply=ok, fds=[10])


def test_a_late_listener_is_closed_again():
    core = ready_client()
    listen, _ = core.send(Listen(endpoint=HERE))
    assert core.cancel(listen.request_id) is None  # a Listen cannot be withdrawn: it is answered
    action = core.receive(encode(ListenOk(request_id=listen.request_id, listener_id=5, local=HERE)), [])
    assert action == CloseOrphanListener(listener_id=5)


def test_a_late_connection_out_is_closed_and_forgotten():
    core = ready_client()
    for reply_type, fds in ((ConnectOk, [20, 21]), (ConnectSocketOk, [20])):
        connect, _ = core.send(Connect(endpoint=THERE))
        core.cancel(connect.request_id)
        reply = reply_type(request_id=connect.request_id, connection_id=9, local=HERE, peer=THERE)
        assert core.receive(encode(reply), fds) == Discard(fds=fds, connection_id=9)


def test_a_late_udp_socket_has_its_channel_closed():
    core = ready_client()
    bind, _ = core.send(UdpBind(endpoint=HERE))
    core.cancel(bind.request_id)
    action = core.receive(encode(UdpBindOk(request_id=bind.request_id, socket_id=4, local=HERE)), [30])
    assert action == Discard(fds=[30], connection_id=None)


def test_late_failures_and_plain_replies_leave_nothing_to_do():
    core = ready_client()
    accept, _ = core.send(Accept(listener_id=1))
    core.cancel(accept.request_id)
    withdrawn = AcceptErr.make(accept.request_id, errno.ECANCELED, "cancelled by the guest")
    assert core.receive(encode(withdrawn), []) == Discard(fds=[], connection_id=None)
    stats, _ = core.send(Stats())
    core.cancel(stats.request_id)
    assert core.receive(encode(StatsOk(request_id=stats.request_id)), []) == Discard(fds=[], connection_id=None)


def test_a_reply_its_caller_did_not_take_follows_the_same_rules():
    core = ready_client()
    accept, _ = core.send(Accept(listener_id=2))
    ok = AcceptOk(request_id=accept.request_id, connection_id=8, local=HERE, peer=THERE)
    delivered = core.receive(encode(ok), [40, 41])
    assert delivered == Reply(accept, ok, [40, 41])  # in time: for the waiting caller
    assert isinstance(delivered, Reply)
    assert core.unclaimed(delivered) == KeepAccepted(listener_id=2, reply=ok, fds=[40, 41])
    listen, _ = core.send(Listen(endpoint=HERE))
    listened = core.receive(encode(ListenOk(request_id=listen.request_id, listener_id=6, local=HERE)), [])
    assert isinstance(listened, Reply)
    assert core.unclaimed(listened) == CloseOrphanListener(listener_id=6)


def test_late_replies_are_held_to_the_rules_and_come_once():
    core = ready_client()
    accept, _ = core.send(Accept(listener_id=1))
    core.cancel(accept.request_id)
    with pytest.raises(errors.UnexpectedMessage, match="cannot answer"):
        core.receive(encode(ListenOk(request_id=accept.request_id, listener_id=1, local=HERE)), [])
    accept, _ = core.send(Accept(listener_id=1))
    core.cancel(accept.request_id)
    core.receive(encode(AcceptErr.make(accept.request_id, errno.ECANCELED, "")), [])
    with pytest.raises(errors.UnexpectedMessage, match="unknown request"):
        core.receive(encode(AcceptErr.make(accept.request_id, errno.ECANCELED, "")), [])


def test_giving_up_twice_or_on_nothing_does_nothing():
    core = ready_client()
    accept, _ = core.send(Accept(listener_id=1))
    assert isinstance(core.cancel(accept.request_id), Cancel)
    assert core.cancel(accept.request_id) is None
    assert core.cancel(999) is None
    assert core.abandoned == 1


def test_closing_drops_the_requests_given_up():
    core = ready_client()
    accept, _ = core.send(Accept(listener_id=1))
    core.cancel(accept.request_id)
    waiting, _ = core.send(Stats())
    assert core.close() == [waiting]
    assert (core.pending, core.abandoned) == (0, 0)


# --- each request's replies, declared once on the request ----------------------------------------


def test_send_numbers_a_request_and_keeps_its_fields():
    core = ready_client()
    listen = Listen(endpoint=HERE, backlog=5)
    assert listen.request_id == 0  # not numbered until it is sent
    sent, frame = core.send(listen)
    assert sent.request_id != 0
    assert (sent.endpoint, sent.backlog) == (HERE, 5)
    assert frame == encode(sent)


def test_replies_are_built_from_each_requests_declarations():
    assert REPLIES[Listen] == {ListenOk, ListenErr, Error}
    assert REPLIES[Accept] == {AcceptOk, AcceptSocketOk, AcceptErr, Error}  # the success reply's subclass too
    assert REPLIES[Connect] == {ConnectOk, ConnectSocketOk, ConnectErr, Error}
    assert REPLIES[Resolve] == {ResolveOk, ResolveErr, Error}
    assert REPLIES[GetOption] == {OptionValue, Error}
    assert REPLIES[Cancel] == frozenset()
    assert {Listen: ListenErr, Accept: AcceptErr, Connect: ConnectErr} == ERROR_REPLY


def test_is_success_tells_the_success_reply_from_the_rest():
    accept = Accept(listener_id=1)
    assert accept.is_success(AcceptOk(request_id=1, connection_id=1, local=HERE, peer=THERE))
    assert accept.is_success(AcceptSocketOk(request_id=1, connection_id=1, local=HERE, peer=THERE))
    assert not accept.is_success(AcceptErr.make(1, errno.EBADF, ""))
    resolve = Resolve(name="x")
    assert not resolve.is_success(ResolveErr(request_id=1, eai=GaiError.NONAME))
    assert not Cancel(target=1).is_success(Error.make(1, errno.EIO, ""))
    option = GetOption(target=OptionTarget.CONNECTION, target_id=1, level=1, name=1)
    assert option.is_success(OptionValue(request_id=1, value=1))


def test_a_request_must_name_a_reply_class():
    with pytest.raises(TypeError, match="must name its success reply"):
        types.new_class("Undeclared", (ControlRequest,))
    with pytest.raises(TypeError, match="does not name a reply class"):

        class StillGeneric(ControlRequest[Ok]):
            pass
