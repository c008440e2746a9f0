"""Self-managed PostgreSQL, one module per mechanism (the layout of Patroni's ``postgresql/`` package).

``connection`` reaches a node, ``pg_ctl`` runs the server programs, ``measure`` reads replication, ``fence``
fences and unfences, ``promote`` waits for replay and promotes, ``rewind`` re-syncs a former primary, and
``provider`` is the ``DatabaseProvider`` that puts them behind the family's contract.
"""
