"""The monitor's settings and limits, each declared once with its default, option and error.

Every field of :class:`Config` is one ``arca-monitor`` option (``max_listeners``
is ``--max-listeners``), built from the field's metadata by ``cli.py``. The
per-session limits also carry the errno a guest gets when it hits them, so
the error reply is decided here, in one place, with a message naming the
limit and the option that raises it.
"""

from __future__ import annotations

import dataclasses
import errno
from dataclasses import dataclass
from typing import TypeVar

from arca_control.protocol.wire import DEFAULT_MAX_PAYLOAD, LENGTH_FIELD_MAX

#: Room for every request of this version (the largest, a Resolve, has 260 bytes), with some to spare.
MIN_PAYLOAD = 512


#: A setting's type: a count or a number of seconds.
N = TypeVar("N", int, float)


def setting(default: N, help: str, *, low: N, high: N | None = None, what: str | None = None, code: int | None = None) -> N:
    """A Config field: its default, its --help text, its valid range and, for a limit, its error."""
    return dataclasses.field(
        default=default, metadata={"help": help, "low": low, "high": high, "what": what, "errno": code}
    )


@dataclass(frozen=True)
class Config:
    connect_timeout: float = setting(
        30.0, "seconds a Connect may take when the request names no timeout", low=0.001
    )
    max_payload: int = setting(
        DEFAULT_MAX_PAYLOAD, "largest control frame payload accepted, in bytes", low=MIN_PAYLOAD, high=LENGTH_FIELD_MAX
    )
    max_protocol_errors: int = setting(16, "bad frames after which a session is closed", low=1)
    max_backlog: int = setting(4096, "largest listen backlog a Listen may ask for (larger ones are cut)", low=1)
    max_datagram_sockets: int = setting(
        256, "UDP sockets open at once per session", low=0, what="UDP sockets per session", code=errno.EMFILE
    )
    max_listeners: int = setting(
        256, "listeners open at once per session", low=0, what="listeners per session", code=errno.EMFILE
    )
    max_connections: int = setting(
        16384, "connections open at once per session", low=0, what="connections per session", code=errno.EMFILE
    )
    max_accepts_per_listener: int = setting(
        1024, "Accepts queued at once on one listener", low=0, what="pending accepts per listener", code=errno.ENOBUFS
    )
    max_accepts: int = setting(
        4096, "Accepts queued at once per session", low=0, what="pending accepts per session", code=errno.ENOBUFS
    )
    max_in_flight: int = setting(
        8192, "Accepts, Connects and name lookups pending at once per session", low=0, what="requests in flight per session",
        code=errno.EAGAIN,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, low, high = getattr(self, f.name), f.metadata["low"], f.metadata["high"]
            if value < low or (high is not None and value > high):
                bounds = f"at least {low}" if high is None else f"between {low} and {high}"
                raise ValueError(f"--{option_name(f.name)} must be {bounds}, not {value}")

    def check(self, limit: str, current: int) -> None:
        """Raise the limit's OSError if ``current`` more would go over it."""
        maximum = getattr(self, limit)
        if current >= maximum:
            meta = Config.__dataclass_fields__[limit].metadata
            raise OSError(meta["errno"], f"limit reached: {maximum} {meta['what']} (--{option_name(limit)})")


def option_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def limits() -> list[dataclasses.Field[object]]:
    """The per-session limits, for documentation and tests."""
    return [f for f in dataclasses.fields(Config) if f.metadata["errno"] is not None]
