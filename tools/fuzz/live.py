"""Live mode: real monitor processes, one session at a time, every answer, close, fd count and log line checked.

First one monitor on an inherited fd (``--fd``), which must exit 0 when its one
session ends; then many sessions of one ``--socket`` monitor, each of a kind
(normal, a fuzzed handshake, or one driven to the bad-frame limit), after each
of which the monitor must be back to the descriptors it had idle. At the end,
SIGTERM must be a clean exit 0, and its stderr must hold no traceback.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from arca_control.protocol import codec, wire
from arca_control.protocol.messages import Accept, Hello, Message
from arca_control.protocol.wire import Capability, Endpoint

from .model import Model, Violation, free_port
from .run import Options, Run
from .schema import REQUEST_TYPES
from .session import LiveSession

if TYPE_CHECKING:
    import random
    from collections.abc import Sequence
    from pathlib import Path


def stalled_listener() -> tuple[socket.socket, socket.socket]:
    """A loopback listener whose accept queue is full, so connects to it neither succeed nor fail."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    return listener, socket.create_connection(listener.getsockname(), timeout=5)


def run_session(sock: socket.socket, kind: str, run: Run, rng: random.Random, options: Options, stalled: Endpoint,
                replay: bytes | None = None) -> LiveSession:
    """One session of ``kind`` (normal, handshake, limit); a violation is recorded as a finding."""
    model = Model(options.max_protocol_errors, free_port(), stalled)
    session = LiveSession(sock, model, run, rng)
    try:
        if kind == "handshake":  # the first frame itself is fuzzed
            firsts: list[type[Message]] = [Hello, Hello, Hello, *REQUEST_TYPES]
            session.check(session.send(session.mutated(rng.choice(firsts))[0], kind))
        else:
            # Half the sessions ask for the socket channel, so both kinds of connection are fuzzed.
            channels = rng.choice([wire.DEFAULT_CAPABILITIES, wire.DEFAULT_CAPABILITIES | Capability.SOCKET_CHANNEL])
            session.check(session.send(codec.encode(Hello(request_id=1, capabilities=channels)), "hello"))
        if replay is not None and not model.closed:
            session.check(session.send(model.make_safe(replay)[0], "replay"))
        steps = 0 if replay is not None else rng.randint(4, 24)
        while not model.closed and (kind == "limit" or steps > 0) and run.more():
            steps -= 1
            choice = rng.random()
            if kind == "limit" and choice < 0.7:  # a bad frame with an id to answer
                bad = codec.encode(Accept(request_id=session.request_id(), listener_id=1)) + b"x"
                session.check(session.send(bad, "trailing"))
            elif choice < 0.45:
                session.check(session.send(session.mutated()[0], "mutated"))
            elif choice < 0.6:
                session.burst()
            else:
                session.probe()
        if not model.closed and model.ready:
            session.probe()  # after everything, a valid request still gets its answer
        if not model.closed:
            sock.shutdown(socket.SHUT_WR)  # our EOF: the monitor must close its end, sending nothing more
            if (extra := session.receive()) is not None:
                raise Violation(f"got {extra!r} after our EOF")
        run.counts["sessions"][kind + " (closed by monitor)" * model.closed] += 1
    except (Violation, OSError) as exc:
        run.finding(session.last, [f"{kind} session: {exc!r}"], "\n".join(session.transcript) + "\n",
                    save=replay is None)
    finally:
        sock.close()
    return session


class SocketMonitor:
    """A standalone monitor (``--socket PATH``): many sessions, one process."""

    def __init__(self, workdir: str, max_errors: int) -> None:
        self.path = os.path.join(workdir, "arca.sock")
        self.stderr_path = os.path.join(workdir, "monitor.stderr")
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "arca_monitor", "--socket", self.path, "--max-protocol-errors", str(max_errors),
                 "--no-dns"],  # a fuzzed Resolve must never reach the system's nameserver
                stdin=subprocess.DEVNULL, stderr=stderr,
            )
        deadline = time.monotonic() + 15
        while not os.path.exists(self.path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the monitor did not start: {self.log()}")
            time.sleep(0.02)
        counts = [-1, self.fd_count()]
        while counts[-1] != counts[-2]:  # settled: no session is open yet
            time.sleep(0.05)
            counts.append(self.fd_count())
        self.baseline = counts[-1]

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(self.path)
        return sock

    def settled_fd_count(self, wait: float = 3.0) -> int:
        """The fd count once a finished session is cleaned up (polled for up to ``wait`` s)."""
        deadline = time.monotonic() + wait
        while (count := self.fd_count()) != self.baseline and time.monotonic() < deadline:
            time.sleep(0.02)
        return count

    def log(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def stop(self) -> list[str]:
        """SIGTERM, which must be a clean exit 0; what is wrong with the monitor's exit and stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return exit_problems(self.process, "after SIGTERM") + stderr_problems(self.log())


def exit_problems(process: subprocess.Popen[bytes], when: str) -> list[str]:
    try:
        code = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    return [f"monitor exited {code} {when}"] if code else []


def stderr_problems(log: str) -> list[str]:
    return [f"monitor stderr contains {word!r}" for word in ("Traceback", "internal error", "session failed")
            if word in log]


def fd_session(workdir: str, run: Run, rng: random.Random, options: Options, stalled: Endpoint) -> None:
    """One session with a monitor on an inherited fd (``--fd N``): it must exit 0 when the session ends."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with open(os.path.join(workdir, "fd-monitor.stderr"), "w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "arca_monitor", "--fd", str(theirs.fileno()), "--no-dns",
             "--max-protocol-errors", str(options.max_protocol_errors)],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stderr=stderr,
        )
        theirs.close()
        session = run_session(ours, "normal", run, rng, options, stalled)
        problems = exit_problems(process, "after its --fd session")
        stderr.seek(0)
        log = stderr.read()
    if problems := problems + stderr_problems(log):
        run.finding(session.last, problems, "\n".join(session.transcript) + "\n\n" + log)


def run_live(options: Options, rng: random.Random, replay: Sequence[Path] = ()) -> int:
    run = Run("live", options)
    stalled, filler = stalled_listener()
    with tempfile.TemporaryDirectory(prefix="arca-fuzz-") as workdir, stalled, filler:
        target = Endpoint(*stalled.getsockname())
        if not replay:
            fd_session(workdir, run, rng, options, target)
        monitor, problems = SocketMonitor(workdir, options.max_protocol_errors), []
        try:
            for index in range(len(replay)) if replay else itertools.count():
                if not replay and not run.more():
                    break
                kind = "limit" if index % 7 == 1 else "handshake" if index % 4 == 3 else "normal"
                data = replay[index].read_bytes() if replay else None
                session = run_session(monitor.connect(), "normal" if replay else kind, run, rng, options, target, data)
                if monitor.process.poll() is not None:
                    problems.append(f"the monitor exited with {monitor.process.returncode} during a session")
                elif (count := monitor.settled_fd_count()) != monitor.baseline:
                    problems.append(f"after a session the monitor holds {count} fds, {monitor.baseline} before")
                if problems:  # blame the session just run
                    run.finding(session.last, problems, "\n".join(session.transcript) + "\n", save=not replay)
                    problems = []
                    break
        except KeyboardInterrupt:
            print("interrupted")
        finally:
            problems += monitor.stop()
        if problems:
            run.finding(b"", problems, monitor.log())
    return run.summary(options.seed)
