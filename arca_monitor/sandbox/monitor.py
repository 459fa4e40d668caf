"""The monitor process's side of arca-run's sandbox: serve the guest's socket path and the sandbox together.

``arca-monitor --socket PATH --sandbox-fd N`` runs :func:`serve_sandboxed`:
the sessions on PATH as always, and beside them the sandbox whose init holds
the other end of channel fd N, served by :func:`.interim.serve_sandbox` (the
seam where the intercept front end will plug in) until the sandbox ends.

Error handling: a sandbox that fails its handoff, or whose channel fails, is
logged; the sockets it handed are closed (so its connections out are refused,
never let through) and the sessions on PATH go on. Resource handling: the
sandbox's sockets live exactly as long as its ``open_sandbox`` block.
"""

from __future__ import annotations

import functools
import logging
import socket
from typing import TYPE_CHECKING

import trio

from ..server import serve_path
from .handle import SandboxError, open_sandbox
from .interim import serve_sandbox

if TYPE_CHECKING:
    from ..audit import AuditLog
    from ..config import Config
    from ..policy import Policy
    from ..resolver import Resolver

log = logging.getLogger("arca_monitor.sandbox")


async def run_sandbox(fd: int, audit: AuditLog) -> None:
    """Serve the sandbox on channel fd ``fd`` until its init goes."""
    try:
        async with open_sandbox(socket.socket(fileno=fd)) as sandbox:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_sandbox, sandbox, audit)
                await sandbox.ended.wait()
                nursery.cancel_scope.cancel()
    except (SandboxError, OSError, ValueError) as exc:
        log.error("sandbox: %s", exc)
    else:
        log.info("sandbox: ended")


async def serve_sandboxed(
    sandbox_fd: int,
    path: str,
    config: Config,
    resolver: Resolver,
    policy: Policy,
    audit: AuditLog,
    *,
    bound: socket.socket | None = None,
) -> None:
    """Sessions on ``path`` (``bound``: its socket, if the caller bound it) and the sandbox on ``sandbox_fd``, until cancelled."""
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_path, path, config, resolver, policy, audit, bound=bound))
        nursery.start_soon(run_sandbox, sandbox_fd, audit)
