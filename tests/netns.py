"""Run one async test scenario in a child process inside a fresh network namespace.

For tests where the monitor must face addresses that are not loopback: in an
``unshare -n`` namespace only ``lo`` exists, so nothing can leave the machine,
and the addresses a test gives are added to ``lo`` so that they answer. The
scenario (a module-level ``async def scenario(tmp: str)``) runs under
``trio.run`` in the child, with everything it starts (a DNS server from
tests/dns_server.py, a session, its monitor) inside the namespace. Its
assertions are its own: the child's exit status and traceback come back as
the test's failure.

Usage::

    def test_something(tmp_path):
        run_in_netns(_scenario, tmp_path, "192.0.2.2/32", "fd00::1/128")
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import trio

#: The repository root, so that the child imports this checkout's tests and packages.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_in_netns(scenario, tmp_path, *addresses: str, timeout: float = 120) -> None:
    """Run ``scenario(str(tmp_path))`` in a new network namespace with ``lo`` up and ``addresses`` on it."""
    setup = ["ip link set lo up"] + [f"ip addr add {address} dev lo" for address in addresses]
    script = "; ".join(setup) + '; exec "$@"'
    target = f"{scenario.__module__}:{scenario.__qualname__}"
    command = ["unshare", "-n", "--", "sh", "-ec", script, "sh", sys.executable, "-m", "tests.netns", target, str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{target} failed in its namespace:\n{result.stdout}\n{result.stderr}"


def main(target: str, tmp: str) -> None:
    module_name, _, function_name = target.partition(":")
    scenario = getattr(importlib.import_module(module_name), function_name)
    trio.run(scenario, tmp)


if __name__ == "__main__":
    main(*sys.argv[1:])
