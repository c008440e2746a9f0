"""DNS: plan a record change from what the provider serves, apply exactly that plan, prove propagation.

The family's contract is ``provider.py`` (the ``DnsProvider`` Protocol and its capabilities) with the pure
plan types of ``plan.py`` and ``weights.py``; backends (``rfc2136``, ``route53``, ``clouddns``) implement
it and import only the contract, and ``registry.py`` is the one module that imports a backend.
``reader.py`` and ``propagation.py`` ask every authoritative nameserver directly and know no provider.
"""
