"""Case h: curl in the sandbox against curl on the host, from the same local server, both ways, and the monitor's CPU.

One server (``helpers/http_blob.py``, on the host's 127.0.0.1) for every
transfer. "direct" is curl on the host, to 127.0.0.1; "arca" is the same
curl under ``arca-run``, to ``host.arca.internal`` (its DNS answered by the
monitor, its connection intercepted, decided by ``--allow-connect`` for the
server's port, and relayed by the monitor). Each transfer is timed by curl
itself (``time_total``: from the start of its lookup to the end of the
transfer), so arca-run's own start and stop are not in it. The download is
``GET /N``; the upload ``PUT``s a sparse file of N bytes (reading its holes
costs no disk; it is read once before the rounds, so that every round finds
it in the page cache).

The monitor's CPU time is read from /proc just before curl starts in the
sandbox and just after it has printed its result: the command waits on its
stdin for a go and, after curl, for the end (``SANDBOXED``), so the monitor's
start and stop are outside the reading.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .base import HOST, progress, transfer_timeout
from .processes import HTTP_BLOB, PLAIN_RELAY, LineReader, cpu_seconds, helper, spawned
from .transfers import Transfer, TransferResult, transfer_case

if TYPE_CHECKING:
    from .base import Sizes

#: What curl prints when it is done: bytes down, bytes up, seconds, the HTTP status.
WRITE_OUT = "%{size_download} %{size_upload} %{time_total} %{http_code}\n"
#: The sandbox's command: say ready, wait for the go, run curl ("$@"), wait for the end (stdin's EOF); curl's status.
SANDBOXED = 'echo ready; read go; "$@"; status=$?; read done; exit $status'
#: Inside the sandbox the host's loopback has this name (arca_monitor.name_pool.HOST_NAME).
HOST_NAME = "host.arca.internal"


@dataclass(frozen=True)
class CurlResult:
    """Both directions: each a TransferResult with variants "direct" (host) and "arca" (sandbox)."""

    download: TransferResult
    upload: TransferResult

    def as_json(self) -> dict[str, object]:
        return {"download": self.download.as_json(), "upload": self.upload.as_json()}


def curl_command(host: str, port: int, nbytes: int, upload: str | None) -> list[str]:
    """curl moving ``nbytes`` from (or, with ``upload``, that file to) the server at ``host``:``port``."""
    curl = shutil.which("curl")
    if curl is None:
        raise RuntimeError("curl is not installed (apt-get install curl)")
    where = f"http://{host}:{port}/"
    send = ["-T", upload, where + "upload"] if upload else [where + str(nbytes)]
    return [curl, "--silent", "--show-error", "--output", "/dev/null", "--write-out", WRITE_OUT, *send]


def parse_result(line: str, nbytes: int, upload: bool) -> float:
    """curl's seconds, once its line says every byte went and the server said 200."""
    down, up, seconds, status = line.split()
    moved = float(up if upload else down)
    if status != "200" or moved != nbytes:
        raise RuntimeError(f"curl moved {moved:.0f} of {nbytes} bytes (HTTP {status})")
    return float(seconds)


async def on_host(port: int, upload: str | None, nbytes: int) -> Transfer:
    with trio.fail_after(transfer_timeout(nbytes)):
        done = await trio.run_process(curl_command(HOST, port, nbytes, upload), capture_stdout=True)
    return Transfer(nbytes, parse_result(done.stdout.decode(), nbytes, upload is not None))


def monitor_of(arca_run: int) -> int:
    """The monitor arca-run (process ``arca_run``) started: its child serving ``--sandbox-fd``."""
    with open(f"/proc/{arca_run}/task/{arca_run}/children") as children:
        for pid in children.read().split():
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"--sandbox-fd" in cmdline.read().split(b"\0"):
                    return int(pid)
    raise RuntimeError("arca-run has no monitor process")


async def in_sandbox(port: int, upload: str | None, nbytes: int) -> Transfer:
    run = [sys.executable, "-m", "arca_monitor.run", "--no-dns", "--allow-connect", f"{HOST}:{port}", "--",
           "sh", "-c", SANDBOXED, "sh", *curl_command(HOST_NAME, port, nbytes, upload)]
    with trio.fail_after(transfer_timeout(nbytes) + 30):  # arca-run's start and stop besides
        process = await trio.lowlevel.open_process(run, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if process.stdin is None or process.stdout is None:
            raise RuntimeError("no pipes to arca-run")
        try:
            lines = LineReader(process.stdout)
            if await lines.line() != "ready":
                raise RuntimeError("the sandbox's command did not start")
            monitor = monitor_of(process.pid)
            before = cpu_seconds(monitor)
            await process.stdin.send_all(b"go\n")
            seconds = parse_result(await lines.line(), nbytes, upload is not None)
            cpu = cpu_seconds(monitor) - before
            await process.stdin.aclose()
            if await process.wait() != 0:
                raise RuntimeError(f"arca-run exited {process.returncode}")
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
    return Transfer(nbytes, seconds, cpu)


def sparse_file(path: str, nbytes: int) -> str:
    """A file of ``nbytes`` zeros that takes no disk (all one hole), readable by anyone, read once; its path.

    Read once here because the first read of a hole fills the page cache, which made the first round's
    upload (always the host's) several times slower than the others.
    """
    with open(path, "wb") as sparse:
        sparse.truncate(nbytes)
    os.chmod(path, 0o644)
    with open(path, "rb") as sparse:
        while sparse.read(1 << 20):
            pass
    return path


async def curl_case(sizes: Sizes) -> CurlResult:
    nbytes = sizes.curl_bytes
    timeout = 4 * sizes.repeats * (transfer_timeout(nbytes) + 30)
    with tempfile.TemporaryDirectory(prefix="arca-bench-") as directory:
        os.chmod(directory, 0o755)  # the sandbox's curl may run as another user (a user namespace)
        upload = await trio.to_thread.run_sync(sparse_file, os.path.join(directory, "upload.bin"), nbytes)
        async with spawned(helper(HTTP_BLOB, timeout)) as (_, server):
            port = int(await server.line())
            progress(f"curl: the server is on {HOST}:{port}")
            async with spawned(helper(PLAIN_RELAY, timeout, port)) as (_, plain_relay):
                relay_port = int(await plain_relay.line())
                return await both_ways(sizes, port, relay_port, upload)


async def both_ways(sizes: Sizes, port: int, relay_port: int, upload: str) -> CurlResult:
    """Each direction: curl on the host, through the plain relay on the host, and in the sandbox, interleaved."""
    nbytes = sizes.curl_bytes
    results = {}
    for name, sent in (("download", None), ("upload", upload)):
        results[name] = await transfer_case(f"curl {name}", nbytes, sizes.repeats, {
            "direct": functools.partial(on_host, port, sent),
            "plain_relay": functools.partial(on_host, relay_port, sent),
            "arca": functools.partial(in_sandbox, port, sent),
        })
    return CurlResult(results["download"], results["upload"])
