"""The approval gateway: a click on a Slack button becomes the run's Update, and the workflow decides.

Two ways in, chosen by configuration:

- **HTTP** (the Slack app's interactivity Request URL, ``POST /slack/actions``). Before anything else every
  request must carry a valid ``X-Slack-Signature`` (HMAC-SHA256 of ``v0:<timestamp>:<body>`` with the
  signing secret), a timestamp at most 5 minutes old, and a signature not seen before (a replayed request).
  Slack wants an answer within 3 s: the Update takes milliseconds, and if it ever takes longer the request
  is answered anyway while the click finishes in the background.
- **Socket Mode**: slack-sdk's built-in client opens a websocket with the app-level token (no public
  endpoint); each envelope is acknowledged at once, then handled like an HTTP click.

A click becomes ``approve``, ``reject`` or ``accept_data_loss`` with ``ApprovalInput(approver=<Slack user id>,
channel="slack", gate=..., plan_checksum=...)``, sent to the run named by the button; a click on **Retry**,
**Skip** or **Abort** under a failed step becomes ``decide`` with ``DecisionInput(decision=...,
operator=<Slack user id>, channel="slack")``. The gateway holds no approval rule: the workflow's validator
decides who may pass which gate and who may decide a failed step. A refusal (the validator's message,
verbatim) goes to the clicker only, as an ephemeral message through the click's ``response_url`` (or
``chat.postEphemeral`` with the bot token); nothing changes. The Update id is the interaction's identity
(message, user, button), so a redelivered click or a double click is one Update.

Secrets come from the environment or files (``SLACK_SIGNING_SECRET``, ``SLACK_APP_TOKEN``, ``SLACK_BOT_TOKEN``
and their ``*_FILE`` forms), and are never logged; neither are payloads.

The package's public API is what ``drflow gateway`` needs, re-exported here: ``GatewayConfig``,
``GatewayConfigError`` and ``serve``. The parts, each imported from its own module:

- ``config``: the configuration and its secrets;
- ``verification``: the Request URL's signature, freshness and replay checks;
- ``clicks``: a Slack interaction payload as a click on a drflow button, and the Update it becomes;
- ``approvals``: ``ApprovalGateway``, clicks to Updates and refusals to ephemeral messages (both modes);
- ``server``: the HTTP server (``/healthz``, the Request URL), the Socket Mode listener, ``running_gateway``.
"""

from workers.gateway.config import GatewayConfig, GatewayConfigError
from workers.gateway.server import serve

__all__ = ["GatewayConfig", "GatewayConfigError", "serve"]
