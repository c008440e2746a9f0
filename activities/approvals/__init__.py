"""Approvals by verified people (issue 11): signed decisions, checked against the people file.

- ``signatures``: the canonical signed payload and its verification. Pure and deterministic (no I/O, no
  clock: the caller passes ``now``), so a workflow's Update validator can call it.
- ``signing``: ``sign``, which runs the real ``ssh-keygen -Y sign``; for the CLI, never for a workflow.

Imports go one way, with nothing re-exported here: ``signing`` uses ``signatures``.
"""
