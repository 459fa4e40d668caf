"""arca_monitor.sandbox: a command in namespaces of its own, whose every connection out reaches the monitor.

``arca-run`` starts :mod:`.init` through ``unshare`` in new network, PID and
mount namespaces (in a user namespace too when it is not root). The init is
PID 1 there: it brings ``lo`` up, routes IPv4 and IPv6 by default via ``lo``,
installs ``ruleset.nft`` and makes, inside the namespace, the sockets the
rules send traffic to. It hands them to the monitor over one SEQPACKET channel
(:mod:`.messages`), runs the command, and serves the monitor's requests to
connect inside the sandbox. The monitor's side is :mod:`.handle`.

What the rules do, for every program whatever its language or I/O interface:

* 127.0.0.1 and ::1 are the sandbox's own loopback, as in a container;
* every TCP connection to anything else (the rest of 127.0.0.0/8 included)
  lands on an intercept listener, where :func:`.destination.original_destination`
  tells where it was going;
* every DNS query (UDP or TCP port 53, any server) lands on a DNS socket;
* every other UDP datagram is refused at once (a connected socket reads
  ECONNREFUSED) and recorded for the audit log (:mod:`.nflog`, :mod:`.refusals`).

Nothing can leave the machine: the namespace has no interface but ``lo``.
"""

#: How arca-run and the init say that the command could not be isolated (as a shell says "cannot execute").
CANNOT_ISOLATE = 126
