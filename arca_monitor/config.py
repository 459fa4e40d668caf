"""The monitor's settings, with the defaults a bare ``arca-monitor`` runs with."""

from __future__ import annotations

from dataclasses import dataclass

from arca_control.wire import DEFAULT_MAX_PAYLOAD


@dataclass(frozen=True)
class Config:
    #: Seconds a Connect may take when the request does not name a timeout.
    connect_timeout: float = 30.0
    #: Largest payload accepted on the control channel.
    max_payload: int = DEFAULT_MAX_PAYLOAD
    #: Rejected frames after which a session is closed.
    max_protocol_errors: int = 16
    #: The largest backlog a Listen may ask for.
    max_backlog: int = 4096
