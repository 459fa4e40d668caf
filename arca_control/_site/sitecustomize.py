"""Put on PYTHONPATH by ``arca-run --transparent``: installs transparent mode at startup.

Only when ``ARCA_TRANSPARENT`` and ``ARCA_MONITOR`` (or ``ARCA_MONITOR_FD``) are set, so that an
interpreter which merely inherits the path is left alone, and none ever
spawns a monitor of its own from here (that monitor would inherit this hook).
``ARCA_SITE`` lists (os.pathsep) the site directories where arca_control and
its dependencies live, for an interpreter other than the one arca-run runs
on. A ``sitecustomize`` of the program's own, further down the path, still
runs afterwards.
"""

import importlib.machinery
import importlib.util
import os
import site
import sys

for _directory in filter(None, os.environ.get("ARCA_SITE", "").split(os.pathsep)):
    site.addsitedir(_directory)

if os.environ.get("ARCA_TRANSPARENT") and (os.environ.get("ARCA_MONITOR") or os.environ.get("ARCA_MONITOR_FD")):
    try:
        import arca_control.transparent

        arca_control.transparent.install()
    except Exception as _exc:  # the program still runs; it just has no network at all
        print(f"arca: transparent mode could not start: {_exc!r}", file=sys.stderr)


def _run_the_next_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_run_the_next_sitecustomize()
