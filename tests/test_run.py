"""arca-run: a guest in an empty network namespace, whose only network is the monitor."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap

import trio

RUN = [sys.executable, "-m", "arca_monitor.run", "--no-dns", "--"]

GUEST = textwrap.dedent(
    """
    import socket, sys, trio, arca_control
    port = int(sys.argv[1])
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2)
        print("direct: connected")
    except OSError as exc:
        print(f"direct: errno {exc.errno}")
    try:  # denied, so reset as soon as the monitor accepts: the connect itself may see it
        outside = socket.create_connection(("192.0.2.1", 80), timeout=5)
        print("intercepted: read", outside.recv(1))
    except OSError as exc:
        print(f"intercepted: errno {exc.errno}")
    async def main():
        async with arca_control.open_session() as session:
            stream = await session.connect("127.0.0.1", port)
            print("monitor:", (await stream.receive_some()).decode())
            listener = await session.listen("127.0.0.1", 0)
            print("listened:", listener.local.port, flush=True)
    trio.run(main)
    sys.exit(7)
    """
)


async def test_a_guest_has_no_network_but_the_monitor():
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)  # a guest that fails before it connects fails the test, not hangs it
    port = server.getsockname()[1]

    async def serve():
        conn, _ = await trio.to_thread.run_sync(server.accept)
        with conn:
            conn.sendall(b"hello from the host")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        # arca-run allows nothing outside the sandbox without a rule: the host's server and a listener on
        # the host's loopback are named.
        rules = ["--allow-connect", f"127.0.0.1:{port}", "--allow-listen", "127.0.0.1:*"]
        result = await trio.run_process([*RUN[:-1], *rules, "--", sys.executable, "-c", GUEST, str(port)],
                                        capture_stdout=True, check=False)
    server.close()
    lines = result.stdout.decode().splitlines()
    # ECONNREFUSED: 127.0.0.1 is the sandbox's own loopback, where the host's server is not.
    assert lines[0] == "direct: errno 111"
    # A connection out (to TEST-NET-1: the sandbox has only lo, so it can reach nothing but the
    # intercept listener) is intercepted; no rule allows it, so the monitor resets it at once (ECONNRESET).
    assert lines[1] == "intercepted: errno 104"
    assert lines[2] == "monitor: hello from the host"
    assert result.returncode == 7  # the guest's own exit status
    # The guest's listener went with the monitor, which arca-run shut down.
    listened = int(lines[3].split()[1])
    socket.create_server(("127.0.0.1", listened)).close()


async def test_signals_reach_the_guest():
    guest = textwrap.dedent(
        """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
        print("ready", flush=True)
        time.sleep(30)
        """
    )
    process = await trio.lowlevel.open_process([*RUN, sys.executable, "-c", guest], stdout=subprocess.PIPE)
    assert process.stdout is not None
    with trio.fail_after(20):
        assert (await process.stdout.receive_some(100)).startswith(b"ready")
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 42
    killed = await trio.run_process(
        [*RUN, sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], check=False
    )
    assert killed.returncode == 128 + signal.SIGKILL


async def test_usage():
    for args in ([], ["--no-dns"], ["--socket", "/tmp/x", "--", "true"]):
        result = await trio.run_process([sys.executable, "-m", "arca_monitor.run", *args], check=False,
                                        capture_stderr=True)
        assert result.returncode == 2


async def test_policy_reaches_the_guest_as_permission_error():
    guest = textwrap.dedent(
        """
        import trio, arca_control
        async def main():
            async with arca_control.open_session() as session:
                try:
                    await session.connect("127.0.0.1", 9)
                except PermissionError as exc:
                    print("denied:", exc)
        trio.run(main)
        """
    )
    result = await trio.run_process(
        [sys.executable, "-m", "arca_monitor.run", "--allow-connect", "127.0.0.2:*", "--", sys.executable, "-c", guest],
        capture_stdout=True,
    )
    assert b"denied:" in result.stdout
    assert b"--allow-connect" in result.stdout


async def test_no_namespace_means_no_run(tmp_path):
    import os

    # No unshare on PATH: arca-run must refuse, never run the command with the host's network.
    bare = tmp_path / "bin"
    bare.mkdir()
    marker = tmp_path / "ran"
    result = await trio.run_process(
        [*RUN, "sh", "-c", f"touch {marker}"], env={**os.environ, "PATH": str(bare)},
        check=False, capture_stderr=True,
    )
    assert result.returncode == 126
    assert b"network namespace" in result.stderr
    assert not marker.exists()
