"""``arca-run``: run a command as a guest with no network of its own, served by a monitor.

    arca-run [--transparent] [monitor options] -- CMD [ARGS...]

The monitor runs here, in the host's network namespace, serving a socket path in
a private directory. CMD runs in a new, empty network namespace (only a loopback
interface, down), with ``ARCA_MONITOR`` naming that path: every
``arca_control.open_session()`` inside it attaches to this monitor instead of
spawning one. Whatever CMD reaches, it reaches through the monitor.

With ``--transparent`` a Python CMD needs no change at all: its interpreter
calls ``arca_control.install()`` at startup (through a ``sitecustomize`` put
on ``PYTHONPATH``), so ``urllib``, ``http.client``, ``socket.create_connection``
and friends go through the monitor (limits in ``arca_control/transparent.py``).
An interpreter started with ``-I``, ``-E`` or ``-S`` skips that hook; it then
has no network at all, as without ``--transparent``.

CMD's exit status becomes arca-run's (128 + N if a signal N ended it). SIGINT and
SIGTERM are forwarded to CMD. When CMD exits, the monitor is shut down, which
closes every socket it opened. If no network namespace can be made (no root and
no user namespaces), arca-run says so and exits 126: it never runs CMD with the
host's network.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import TYPE_CHECKING

from arca_control.protocol import launch

if TYPE_CHECKING:
    import types

#: How arca-run says that it could not isolate the command (as a shell says "cannot execute").
CANNOT_ISOLATE = 126
MONITOR_START_TIMEOUT = 10.0


def usage() -> str:
    return (
        "usage: arca-run [--transparent] [monitor options] -- CMD [ARGS...]\n"
        "Runs CMD in an empty network namespace; its only network is an arca monitor\n"
        "(ARCA_MONITOR in its environment). Monitor options are arca-monitor's (see\n"
        "arca-monitor --help), except --fd and --socket, which arca-run sets.\n"
        "--transparent: a Python CMD's sockets and name lookups go through the monitor\n"
        "unchanged (arca_control.install() at its startup)."
    )


def isolation_prefix() -> list[str] | None:
    """The command prefix that runs a program in a new network namespace, or None if none works."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    # As root a plain network namespace; otherwise inside a user namespace (mapped to root).
    for prefix in ([unshare, "--net", "--"], [unshare, "--user", "--map-root-user", "--net", "--"]):
        probe = subprocess.run([*prefix, "true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if probe.returncode == 0:
            return prefix
    return None


def start_monitor(path: str, options: list[str]) -> subprocess.Popen[bytes]:
    monitor = subprocess.Popen([sys.executable, "-m", "arca_monitor", "--socket", path, *options])
    deadline = time.monotonic() + MONITOR_START_TIMEOUT
    while not os.path.exists(path):
        if monitor.poll() is not None or time.monotonic() > deadline:
            monitor.kill()
            monitor.wait()
            raise RuntimeError("the monitor did not start (see its messages above)")
        time.sleep(0.01)
    return monitor


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print(usage(), file=sys.stderr)
        return 2
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    transparent = "--transparent" in options
    options = [opt for opt in options if opt != "--transparent"]
    if any(opt in ("-h", "--help") for opt in options):
        print(usage())
        return 0
    if any(opt.startswith(("--fd", "--socket")) for opt in options):
        print("arca-run: --fd and --socket are arca-run's to set", file=sys.stderr)
        return 2
    prefix = isolation_prefix()
    if prefix is None:
        print("arca-run: cannot make a network namespace (needs root or user namespaces, and unshare);"
              " not running the command with the host's network", file=sys.stderr)
        return CANNOT_ISOLATE
    with tempfile.TemporaryDirectory(prefix="arca-run-") as workdir:
        os.chmod(workdir, 0o700)
        path = os.path.join(workdir, "monitor.sock")
        try:
            monitor = start_monitor(path, options)
        except RuntimeError as exc:
            print(f"arca-run: {exc}", file=sys.stderr)
            return 1
        try:
            return run_guest(prefix, command, path, transparent)
        finally:
            monitor.send_signal(signal.SIGTERM)  # a clean shutdown: every session and socket closed
            try:
                monitor.wait(timeout=10)
            except subprocess.TimeoutExpired:
                monitor.kill()
                monitor.wait()


def transparent_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a Python guest that installs transparent mode at startup."""
    paths = sysconfig.get_paths()
    sites = dict.fromkeys([launch.package_root(), paths["purelib"], paths["platlib"]])
    return {
        **env,
        launch.TRANSPARENT_ENV: "1",
        launch.SITE_ENV: os.pathsep.join(sites),
        "PYTHONPATH": os.pathsep.join(filter(None, [launch.site_hook_dir(), env.get("PYTHONPATH", "")])),
    }


def run_guest(prefix: list[str], command: list[str], path: str, transparent: bool = False) -> int:
    env = {**os.environ, launch.MONITOR_ENV: path}
    if transparent:
        env = transparent_env(env)
    try:
        guest = subprocess.Popen([*prefix, *command], env=env)
    except OSError as exc:
        print(f"arca-run: {exc}", file=sys.stderr)
        return 127
    forwarded = {}

    def forward(signum: int, _frame: types.FrameType | None) -> None:
        guest.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        forwarded[signum] = signal.signal(signum, forward)
    try:
        status = guest.wait()
    finally:
        for signum, previous in forwarded.items():
            signal.signal(signum, previous)
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main())
