"""A local stand-in for Slack, speaking Slack's wire format, for the tests and the approval benchmark.

- ``standin``: the Web API over HTTP (``/api/<method>``), ``response_url``s, the clicks Slack would send;
- ``socket_mode``: the stand-in's Socket Mode websocket server;
- ``block_kit``: Block Kit's limits, which every message posted to the stand-in is checked against;
- ``workspace``: the workspace's ids and secrets, the runbook approvals naming its people, and a history
  decoder to check those secrets never reach Temporal.
"""
