"""Faults drflow injects on this machine, for its reliability tests and for drills: a TCP fault proxy in
front of one loopback server (delay, blackhole, reset), a UDP one in front of a nameserver (delay, loss,
blackhole), process kill -9 and restart, a PostgreSQL standby whose replay is paused. Each is a ``Fault``
(inject, remove); ``FaultRegistry`` records what is injected so that ``cleanup_leftovers`` (``drflow faults
cleanup``) undoes what a crashed process left. See docs/reliability.md.
"""
