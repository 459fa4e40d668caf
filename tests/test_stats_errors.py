"""StatsOk counts every error reply the monitor sent, by errno, and only requests that decoded: a live monitor, raw frames."""

from __future__ import annotations

import errno

from arca_control.protocol.codec import encode
from arca_control.protocol.messages import (
    Abort,
    Accept,
    AcceptErr,
    Cancel,
    CloseListener,
    CloseListenerOk,
    Connect,
    ConnectErr,
    Error,
    GetOption,
    Hello,
    HelloOk,
    Listen,
    ListenOk,
    MessageType,
    SetOption,
    Stats,
    StatsOk,
    UdpBind,
)
from arca_control.protocol.wire import Capability, Endpoint, OptionTarget

from .raw_monitor import expect
from .test_monitor import LOOPBACK


def test_stats_count_every_kind_of_error_reply(raw, stalled_address):
    # TCP only: a UDP request is refused for the capability.
    expect(raw.request(Hello(request_id=1, capabilities=Capability.TCP)), HelloOk)
    # Eight EBADF replies, of every kind there is.
    expect(raw.request(Accept(request_id=2, listener_id=77)), AcceptErr, errno.EBADF)
    expect(raw.request(CloseListener(request_id=3, listener_id=77)), Error, errno.EBADF)
    expect(raw.request(Abort(request_id=4, connection_id=77)), Error, errno.EBADF)
    expect(raw.request(SetOption(request_id=5, target=OptionTarget.CONNECTION, target_id=77, level=1, name=9, value=1)),
           Error, errno.EBADF)
    expect(raw.request(GetOption(request_id=6, target=OptionTarget.LISTENER, target_id=77, level=1, name=9)),
           Error, errno.EBADF)
    listener = expect(raw.request(Listen(request_id=7, endpoint=LOOPBACK)), ListenOk).listener_id
    raw.send(encode(Accept(request_id=8, listener_id=listener)))
    raw.send(encode(Accept(request_id=9, listener_id=listener)))
    replies = [raw.request(CloseListener(request_id=10, listener_id=listener)), raw.receive(), raw.receive()]
    assert sorted((type(r).__name__, r.request_id) for r in replies) == [
        ("AcceptErr", 8), ("AcceptErr", 9), ("CloseListenerOk", 10)]
    assert all(r.errno == errno.EBADF for r in replies if not isinstance(r, CloseListenerOk))
    expect(raw.request(Accept(request_id=11, listener_id=listener)), AcceptErr, errno.EBADF)  # closed now
    # ECANCELED for a withdrawn Accept and a withdrawn Connect.
    listener = expect(raw.request(Listen(request_id=12, endpoint=LOOPBACK)), ListenOk).listener_id
    raw.send(encode(Accept(request_id=13, listener_id=listener)))
    expect(raw.request(Cancel(request_id=14, target=13)), AcceptErr, errno.ECANCELED)
    raw.send(encode(Connect(request_id=15, endpoint=Endpoint(*stalled_address))))
    # EBUSY: its id is still pending.
    expect(raw.request(Connect(request_id=15, endpoint=Endpoint(*stalled_address))), Error, errno.EBUSY)
    expect(raw.request(Cancel(request_id=16, target=15)), ConnectErr, errno.ECANCELED)
    # EOPNOTSUPP: UDP was not granted.
    expect(raw.request(UdpBind(request_id=17, endpoint=LOOPBACK)), Error, errno.EOPNOTSUPP)
    # Bad frames: EBADMSG, EPROTO, EMSGSIZE.
    raw.send(b"\x70\x00\x00\x12\x00\x00\x00")
    expect(raw.receive(), Error, errno.EBADMSG)
    raw.send(encode(Listen(request_id=19, endpoint=LOOPBACK)) + b"x")
    expect(raw.receive(), Error, errno.EPROTO)
    raw.send(b"\x02\xff\xff\x14\x00\x00\x00" + b"\x00" * 5000)
    expect(raw.receive(), Error, errno.EMSGSIZE)
    stats = expect(raw.request(Stats(request_id=21)), StatsOk)
    assert dict(stats.errors) == {
        errno.EBADF: 8, errno.ECANCELED: 2, errno.EBUSY: 1, errno.EOPNOTSUPP: 1,
        errno.EBADMSG: 1, errno.EPROTO: 1, errno.EMSGSIZE: 1,
    }
    # Requests that decoded, refused ones included; the three bad frames did not.
    assert dict(stats.requests) == {
        MessageType.HELLO: 1, MessageType.ACCEPT: 5, MessageType.CLOSE_LISTENER: 2, MessageType.ABORT: 1,
        MessageType.SET_OPTION: 1, MessageType.GET_OPTION: 1, MessageType.LISTEN: 2, MessageType.CANCEL: 2,
        MessageType.CONNECT: 2, MessageType.UDP_BIND: 1, MessageType.STATS: 1,
    }
    assert (stats.listeners, stats.connections, stats.denials) == (1, 0, 0)
    raw.finish()
