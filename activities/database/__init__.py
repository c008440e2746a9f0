"""Databases: measure replication, fence the old primary, wait for replay, promote, unfence, re-sync.

The family's contract is ``provider.py`` (the ``DatabaseProvider`` Protocol) with ``results.py`` (one set of
result types for every provider). Backends (``postgres/``, ``rds``, ``aurora``) implement it and import only
the contract; ``registry.py`` is the one module that imports a backend, and ``activities.py`` holds the
``db_*`` activities that reach the runbook's provider through it.
"""
