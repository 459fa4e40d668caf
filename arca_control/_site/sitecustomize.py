"""Put on PYTHONPATH by ``arca-run --transparent``: installs transparent mode at startup.

Only when ``ARCA_TRANSPARENT`` is set, so that an interpreter which merely
inherits the path is left alone. ``ARCA_SITE`` lists (os.pathsep) the site
directories where arca_control and its dependencies live, for an interpreter
other than the one arca-run runs on.
"""

import os
import site

for _directory in filter(None, os.environ.get("ARCA_SITE", "").split(os.pathsep)):
    site.addsitedir(_directory)

if os.environ.get("ARCA_TRANSPARENT"):
    try:
        import arca_control.transparent

        arca_control.transparent.install()
    except Exception as _exc:  # the program still runs; it just has no network at all
        import sys

        print(f"arca: transparent mode could not start: {_exc!r}", file=sys.stderr)
