"""Slack, as the notifier of approval gates: Block Kit gate messages, the progress thread, the summary.

- ``client``: the bot token (read at the moment of use, never an activity input or result), the Web API
  client, and Slack's failures as typed errors (``SlackErrorType``) for the workflow's retry policy.
- ``models``: what the workflow passes in and gets back; these shapes are recorded in histories.
- ``blocks``: the Block Kit messages and their texts, within Slack's limits.
- ``activities``: the activities themselves (``SLACK_ACTIVITIES``).

Imports go one way, with nothing re-exported here: ``activities`` uses ``blocks``, ``models`` and ``client``;
``blocks`` uses ``models`` (and ``client`` for its error type); ``models`` and ``client`` use neither.
"""
