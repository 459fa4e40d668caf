"""The bench's peer programs, each run by path as a process of its own (``processes.helper``).

They are the real peers of the transfers, connects and accepts: plain blocking
sockets in separate processes, so the bench (which is also the guest) shares
neither their CPU time nor their GIL. Each takes an alarm in seconds as its
first argument and arms it first: whatever happens to the bench, a helper
cannot outlive it by long. They import nothing but the standard library,
except ``guest.py``, the programs case's guest program, which is arca's user.
"""
