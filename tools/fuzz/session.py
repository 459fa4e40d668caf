"""One live guest session: frames sent to a real monitor one by one, every answer checked against the model.

Each frame back goes through the model's bystander core first (a bad frame, a
reply that answers nothing owed, a second reply, a wrong type or descriptor
count), then must be the answer the model expects, in its place; an EIO
"internal error" reply, the monitor's own bug, is a finding wherever it comes.
Between mutated frames and bursts of them it sends probes, valid requests
whose answer is known (some wait, to be cancelled or to accept a real
connection whose bytes must go both ways), so a monitor that still answers
but answers wrongly is caught too.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from typing import TYPE_CHECKING

from arca_control.protocol import codec, errors
from arca_control.protocol.messages import (
    Accept,
    AcceptOk,
    AnyRequest,
    Cancel,
    CloseListener,
    Connect,
    ConnectionEnd,
    ErrorReply,
    Listen,
    Message,
    Stats,
)
from arca_control.protocol.wire import HEADER_SIZE, LENGTH_FIELD_MAX, Endpoint

from .model import Expect, Model, Violation
from .mutations import mutate
from .schema import ALL_TYPES, HEADER, REQUEST_TYPES, random_message

if TYPE_CHECKING:
    import random
    from collections.abc import Sequence

    from .run import Run


def is_internal_error(msg: Message) -> bool:
    """The monitor's answer to a bug of its own (a handler that raised, a reply that broke the protocol)."""
    return isinstance(msg, ErrorReply) and msg.errno == errno.EIO and msg.message.startswith("internal error")


class LiveSession:
    """One guest session driven frame by frame, every answer checked against the model."""

    TIMEOUT = 5.0

    def __init__(self, sock: socket.socket, model: Model, run: Run, rng: random.Random) -> None:
        self.sock, self.model, self.run, self.rng = sock, model, run, rng
        self.sock.settimeout(self.TIMEOUT)
        self.transcript: list[str] = []
        self.connections: set[int] = set()
        self.next_id = 1
        self.last = b""  # the frame saved if the monitor misbehaves

    def request_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def send(self, data: bytes, kind: str, fds: Sequence[int] = ()) -> Expect:
        expect = self.model.expect(data, len(fds))
        expect.frame = data
        self.transcript.append(f"-> [{kind}] {data[:80].hex(' ')}" + f" with {len(fds)} fds" * bool(fds))
        self.run.counts["frames"][kind] += 1
        self.run.cases += 1
        self.run.progress()
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.send(data)
        return expect

    def receive(self, keep_fds: list[int] | None = None) -> Message | None:
        """The next frame from the monitor (None at EOF), checked by the core; its descriptors go to ``keep_fds`` or are closed."""
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, HEADER_SIZE + LENGTH_FIELD_MAX, 4, socket.MSG_CMSG_CLOEXEC)
            except TimeoutError:
                raise Violation(f"no answer within {self.TIMEOUT:g} s: the monitor hangs") from None
            if keep_fds is not None:
                keep_fds.extend(fds)
            try:
                if not data and not fds:
                    self.transcript.append("<- EOF")
                    return None
                msg = self.model.core.observe(data, len(fds))
            except errors.RemoteProtocolError as exc:
                raise Violation(f"the monitor sent a bad frame {data.hex(' ')}: {exc!r}") from None
            except errors.LocalProtocolError as exc:
                raise Violation(f"the monitor broke the protocol with {data.hex(' ')} and {len(fds)} fds: {exc}") from None
            finally:
                for fd in fds if keep_fds is None else ():
                    os.close(fd)
            self.transcript.append(f"<- {msg!r}")
            self.run.counts["replies"][type(msg).__name__] += 1
            if is_internal_error(msg):
                raise Violation(f"the monitor answered with an internal error, a bug of its own: {msg!r}")
            if not (isinstance(msg, ConnectionEnd) and msg.connection_id in self.connections):
                return msg  # (a connection of an earlier probe ending answers nothing)

    def check(self, expect: Expect, keep_fds: list[int] | None = None) -> Message | None:
        reply, self.last = None, expect.frame or self.last
        for earlier in expect.before:
            self.check(earlier)
        if expect.reply_id is not None:
            want = f"{'/'.join(t.__name__ for t in expect.types)} for id {expect.reply_id}"
            reply = self.receive(keep_fds)
            if reply is None or reply.request_id != expect.reply_id or not isinstance(reply, expect.types):
                raise Violation(f"got {reply or 'EOF'!r}, expected {want}")
            if expect.code is not None and (not isinstance(reply, ErrorReply) or reply.errno != expect.code):
                raise Violation(f"got {reply!r}, expected {want} with errno {errno.errorcode[expect.code]}")
            if expect.check is not None and (wrong := expect.check(reply)) is not None:
                raise Violation(f"wrong contents in {reply!r}: {wrong}")
        if expect.close and (extra := self.receive()) is not None:
            raise Violation(f"got {extra!r} where the session should have closed")
        return reply

    def mutated(self, cls: type[Message] | None = None) -> tuple[bytes, Message | None]:
        for _ in range(4):  # mostly frames that leave the session open, so more of them reach one session
            kind = cls or (self.rng.choice(REQUEST_TYPES) if self.rng.random() < 0.7 else self.rng.choice(ALL_TYPES))
            names, data = mutate(self.rng, random_message(self.rng, kind))
            if len(data) >= HEADER_SIZE and HEADER.unpack_from(data)[2] != 0:
                break
        self.run.counts["mutations"].update(names)
        return self.model.make_safe(data)

    def burst(self) -> None:
        """Mutated frames sent back to back: inline replies must come in request order."""
        expects = []
        named: set[int] = set()  # the request ids the burst's frames so far name
        for _ in range(self.rng.randint(2, 6)):
            data, msg = self.mutated()
            if msg is not None and self.out_of_step(msg, named):
                msg = Accept(request_id=self.request_id(), listener_id=0)
                data = codec.encode(msg) + b"x"
            if msg is not None:
                named |= {msg.request_id, msg.target} if isinstance(msg, Cancel) else {msg.request_id}
            expects.append(self.send(data, "burst"))
            if self.model.closed:
                break
        for expect in expects:
            self.check(expect)

    def out_of_step(self, msg: Message, named: set[int]) -> bool:
        """Whether the answer to ``msg`` in a burst could not be known, in its place, when the burst is sent."""
        # A Connect's reply, and a withdrawn Connect's ECANCELED, come from a task of its own, in any
        # order; a listener a Listen opens is known only from its reply, too late for the frames after it.
        if isinstance(msg, (Connect, Listen)) or (
            isinstance(msg, Cancel) and isinstance(self.model.core.pending.get(msg.target), Connect)
        ):
            return True
        # The monitor answers an earlier frame of the burst before it reads this one, but the core
        # here is fed the whole burst before any reply: to it, that id would still be pending.
        return msg.request_id in named or (isinstance(msg, Cancel) and msg.target in named)

    def probe(self) -> None:
        """A valid request whose answer is known; some wait, to be cancelled or to accept a connection."""
        m, rid = self.model, self.request_id()
        listener = self.rng.choice(list(m.listeners)) if m.listeners else 0xFFFFFFFF
        probes: dict[str, AnyRequest] = {
            "listen": Listen(request_id=rid, endpoint=Endpoint("127.0.0.1", 0)),
            "accept_unknown": Accept(request_id=rid, listener_id=0xFFFFFFFF),
            "connect_refused": Connect(request_id=rid, endpoint=m.refused, timeout_ms=5000),
            "connect_timeout": Connect(request_id=rid, endpoint=m.stalled, timeout_ms=self.rng.randint(1, 50)),
            "connect_cancel": Connect(request_id=rid, endpoint=m.stalled),
            "cancel_unknown": Cancel(request_id=rid, target=self.rng.getrandbits(32) | 1 << 31),
            "fds": Accept(request_id=rid, listener_id=0xFFFFFFFF),
            "stats": Stats(request_id=rid),  # its counts must be the core's
        }
        if m.listeners:
            probes.update(close_listener=CloseListener(request_id=rid, listener_id=listener),
                          accept_cancel=Accept(request_id=rid, listener_id=listener),
                          accept_connect=Accept(request_id=rid, listener_id=listener))
        kind = self.rng.choice(sorted(probes))
        frame = codec.encode(probes[kind])
        if kind == "fds":  # refused, and the monitor must not keep them (the fd count shows it)
            with open(os.devnull) as junk:
                data = self.rng.choice([frame, b"", frame[:3]])
                self.check(self.send(data, kind, [junk.fileno()] * self.rng.randint(1, 5)))
            return
        self.check(self.send(frame, kind))
        if kind == "accept_connect":
            self.connect_to(listener)
        elif m.waiting(rid) and self.rng.random() < 0.8:  # else it stays pending, maybe to the session's end
            if self.rng.random() < 0.5:  # the id of a pending request may not be reused
                self.check(self.send(codec.encode(Accept(request_id=rid, listener_id=0xFFFFFFFF)), "same_id"))
            self.check(self.send(codec.encode(Cancel(request_id=self.request_id(), target=rid)), kind))

    def connect_to(self, listener: int) -> None:
        """Connect a real client: the oldest Accept queued on ``listener`` gets it; bytes go both ways."""
        fds: list[int] = []
        rid = self.model.queued(listener)[0]
        with socket.create_connection(self.model.listeners[listener], timeout=self.TIMEOUT) as client:
            try:
                # Connection ids count 1, 2, ... per session; only these round trips make connections here.
                wanted = (len(self.connections) + 1, self.model.listeners[listener], Endpoint.from_sockaddr(client.getsockname()))
                expect = Expect(rid, (AcceptOk,), check=lambda r: None if isinstance(r, AcceptOk)
                                and (r.connection_id, r.local, r.peer) == wanted else f"{wanted} expected")
                reply = self.check(expect, fds)
                if not isinstance(reply, AcceptOk):  # check() let nothing else through
                    raise Violation(f"got {reply!r}, expected AcceptOk")
                self.connections.add(reply.connection_id)
                client.sendall(b"ping")
                if not select.select([fds[0]], [], [], self.TIMEOUT)[0] or os.read(fds[0], 16) != b"ping":
                    raise Violation("bytes sent to an accepted connection did not reach its rx pipe")
                os.write(fds[-1], b"pong")  # tx; on the socket channel the one socket is both
                if client.recv(16) != b"pong":
                    raise Violation("bytes written to tx did not reach the peer")
            finally:
                for fd in fds:
                    os.close(fd)
