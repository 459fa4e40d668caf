"""The monitor process's side of arca-run's sandbox: serve the guest's socket path and the sandbox together.

``arca-monitor --socket PATH --sandbox-fd N`` runs :func:`serve_sandboxed`:
the sessions on PATH as always, and beside them the sandbox whose init holds
the other end of channel fd N, served by :func:`..sandbox_front.serve_sandbox`
(intercepted TCP, DNS, refused UDP, the published ports; under the same
config, policy, resolver and audit log as the sessions), and the sessions
the command's processes open through the sandbox's doorbell
(:func:`..server.serve_doorbell`), until the sandbox ends.

Error handling: a sandbox that fails its handoff, or whose channel fails, is
logged; the sockets it handed are closed (so its connections out are refused,
never let through) and the sessions on PATH go on. Resource handling: the
sandbox's sockets live exactly as long as its ``open_sandbox`` block; the
published ports' listeners are closed when the sandbox ends (or fails), so
that a client is refused rather than left waiting.
"""

from __future__ import annotations

import functools
import logging
import socket
from typing import TYPE_CHECKING

import trio

from ..sandbox_front import serve_sandbox
from ..server import serve_doorbell, serve_path
from .handle import SandboxError, open_sandbox

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..audit import AuditLog
    from ..config import Config
    from ..policy import Policy
    from ..publish import Published
    from ..resolver import Resolver

log = logging.getLogger("arca_monitor.sandbox")


async def run_sandbox(fd: int, config: Config, resolver: Resolver, policy: Policy, audit: AuditLog,
                      published: Sequence[Published] = ()) -> None:
    """Serve the sandbox on channel fd ``fd`` (and its ``published`` ports) until its init goes."""
    try:
        async with open_sandbox(socket.socket(fileno=fd)) as sandbox:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(serve_sandbox, sandbox, config, policy, resolver, audit,
                                                     published=published))
                nursery.start_soon(serve_doorbell, sandbox.doorbell, config, resolver, policy, audit)
                await sandbox.ended.wait()
                nursery.cancel_scope.cancel()
    except (SandboxError, OSError, ValueError) as exc:
        log.error("sandbox: %s", exc)
    else:
        log.info("sandbox: ended")
    finally:
        for port in published:
            port.listener.close()


async def serve_sandboxed(
    sandbox_fd: int,
    path: str,
    config: Config,
    resolver: Resolver,
    policy: Policy,
    audit: AuditLog,
    *,
    bound: socket.socket | None = None,
    published: Sequence[Published] = (),
) -> None:
    """Sessions on ``path`` (``bound``: its socket, if the caller bound it) and the sandbox on ``sandbox_fd``, until cancelled."""
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_path, path, config, resolver, policy, audit, bound=bound))
        nursery.start_soon(run_sandbox, sandbox_fd, config, resolver, policy, audit, published)
