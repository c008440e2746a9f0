"""Traffic: move each region's share of the traffic (canary failback) and judge a canary stage.

The family's contract is ``provider.py`` (ONE async ``TrafficManager`` Protocol and the weights it reports).
Backends: ``haproxy`` (the runtime API) and ``dns_weighted`` (the DNS provider's weighted records, reached
through ``activities.dns.registry``); ``registry.py`` is the one module that imports a backend.
``analysis.py`` sends real requests through the frontend and judges them; ``activities.py`` holds the
activities.
"""
