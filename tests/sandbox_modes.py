"""Who runs a sandbox in the tests: root, or nobody in a user namespace where this kernel allows it."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING

from arca_control.protocol import launch as launch_env
from arca_monitor.sandbox import launch

if TYPE_CHECKING:
    from collections.abc import Iterator

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


@dataclass(frozen=True)
class Mode:
    """Who runs the sandbox: root, or nobody (with a Python that nobody can run, and this project on its path)."""

    name: str
    as_user: list[str]
    python: str
    env: dict[str, str]

    def run(self, *options: str) -> list[str]:
        """The arca-run command line in this mode."""
        return [*self.as_user, self.python, "-m", "arca_monitor.run", "--no-dns", *options]

    def script(self, source: str, *args: object) -> list[str]:
        return [self.python, "-c", textwrap.dedent(source), *map(str, args)]


def runs_as_nobody(unshare: str, python: str, env: dict[str, str]) -> bool:
    """``python`` runs, with this project, as nobody mapped to root in a user namespace."""
    probe = [*AS_NOBODY, unshare, *launch.USER_NAMESPACE, "--net", python, "-c", "import trio, dns, arca_monitor"]
    return subprocess.run(probe, env=env, capture_output=True, cwd="/", timeout=60).returncode == 0


@functools.cache
def nobody_mode() -> Mode | None:
    """The user-namespace mode, if this kernel allows unprivileged user namespaces and nobody can run Python."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    paths = sysconfig.get_paths()
    path = os.pathsep.join(dict.fromkeys([launch_env.package_root(), paths["purelib"], paths["platlib"]]))
    env = {**os.environ, "PYTHONPATH": path}
    # This interpreter may live where nobody cannot go (root's home): then the system's, if it is the same version.
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, system):
        if os.path.exists(python) and runs_as_nobody(unshare, python, env):
            return Mode("user", AS_NOBODY, python, env)
    return None


@contextlib.contextmanager
def host_directory(prefix: str, permissions: int) -> Iterator[str]:
    """A fresh directory of the host with ``permissions`` (so that nobody's sandbox or monitor can reach it), removed after."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, permissions)
    try:
        yield path
    finally:
        shutil.rmtree(path)
