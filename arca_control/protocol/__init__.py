"""arca_control.protocol: what the guest and the monitor share, and nothing else.

The layers, each depending only on those before it: ``errors`` (the one error
hierarchy), ``endpoint`` (the one address type, parsed once) and ``values``
(it and the enums), ``layouts`` and ``fastfields``
(each field type in construct, and with struct), ``examples`` (random valid
values), ``fieldtype`` (what binds those together), ``wire`` (the header, and
one declaration per field type), ``messages`` (typed messages), ``fastpath``
and ``codec`` (bytes), ``core`` (the protocol's rules) with ``client`` and
``server`` (each side's state, no I/O), ``channel`` (frames and fds over a
socket). Beside them: ``addresses`` (checking literal addresses), ``records``
(the UDP datagram record layout) and ``launch`` (the environment a launcher
hands a guest).

This package imports nothing else of the project: both sides depend on it,
never the reverse.
"""
