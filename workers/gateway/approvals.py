"""Clicks to the runs' Updates, refusals to ephemeral messages: what both modes of the gateway share.

The gateway holds no approval rule: the workflow's validator decides, and its refusal reaches the clicker
verbatim. Slack wants an answer within 3 s, so the Request URL answers within ``answer_within_seconds`` and
lets a slower click finish in the background.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any
from urllib.parse import parse_qs

import httpx
from pydantic import ValidationError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from temporalio.client import Client, WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from workers.gateway.clicks import Click, ClickOutcome, NotOurs, parse_click
from workers.gateway.config import GatewayConfig
from workers.gateway.verification import RequestVerifier
from workflows.failover_models import UpdateOutcome

log = logging.getLogger("drflow.gateway")

ACTIONS_PATH = "/slack/actions"
UPDATE_TIMEOUT = 30.0


class ApprovalGateway:
    """Turns clicks into Updates and refusals into ephemeral messages; shared by both modes."""

    def __init__(self, client: Client, config: GatewayConfig) -> None:
        self._client = client
        self._config = config
        self._verifier = RequestVerifier(config.signing_secret, config.max_age_seconds)
        self._http = httpx.AsyncClient(timeout=5.0, trust_env=True)
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def accepts_http(self) -> bool:
        return self._config.signing_secret is not None

    # ------------------------------------------------------------------------------------------- clicks
    async def handle_payload(self, payload: Mapping[str, Any]) -> ClickOutcome | None:
        """A Slack interaction payload; None when it is not a click on a drflow button."""
        try:
            click = parse_click(payload)
        except NotOurs as err:
            log.info("ignored an interaction: %s", err)
            return None
        outcome = await self.send_update(click)
        log.info(
            "%s of %s %s by %s: %s",
            click.update, click.workflow_id, click.target, click.user_id,
            "accepted" if outcome.accepted else f"refused: {outcome.message}",
        )  # fmt: skip
        if not outcome.accepted:
            await self.tell(click, f":no_entry: {outcome.message}. Nothing changed.")
        return outcome

    async def send_update(self, click: Click) -> ClickOutcome:
        try:
            answer = click.answer()
        except ValidationError:
            if click.update == "decide":
                return ClickOutcome(
                    False, f"this button does not name a drflow decision ({click.decision!r})"
                )
            return ClickOutcome(False, f"this button does not name a drflow gate ({click.gate!r})")
        handle = self._client.get_workflow_handle(click.workflow_id, run_id=click.run_id)
        try:
            result = await asyncio.wait_for(
                handle.execute_update(click.update, answer, id=click.update_id, result_type=UpdateOutcome),
                UPDATE_TIMEOUT,
            )
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            return ClickOutcome(False, cause.message if isinstance(cause, ApplicationError) else str(cause))
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                ended = "completed" in err.message
                return ClickOutcome(
                    False,
                    "this run has already ended" if ended else f"this run no longer exists ({err.message})",
                )
            return ClickOutcome(
                False,
                f"drflow could not reach Temporal ({err.message}): "
                + (
                    f"decide with `drflow decide {click.workflow_id} {click.decision}`"
                    if click.update == "decide"
                    else f"approve with `drflow approve {click.workflow_id}`"
                ),
            )
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            return ClickOutcome(
                False, f"the run did not answer in time: is a drflow worker running? ({click.workflow_id})"
            )
        return ClickOutcome(result.accepted, result.message)

    async def tell(self, click: Click, text: str) -> None:
        """An ephemeral message to the clicker: through the click's response_url, else chat.postEphemeral."""
        if click.response_url and click.response_url.startswith(("https://", "http://")):
            try:
                response = await self._http.post(
                    click.response_url,
                    json={"response_type": "ephemeral", "replace_original": False, "text": text},
                )
                if response.status_code < 300:
                    return
                log.warning("response_url answered HTTP %s", response.status_code)
            except httpx.HTTPError as err:
                log.warning("response_url failed: %s", type(err).__name__)
        if self._config.bot_token and click.channel_id:
            await asyncio.to_thread(self._post_ephemeral, click.channel_id, click.user_id, text)

    def _post_ephemeral(self, channel: str, user: str, text: str) -> None:
        client = WebClient(token=self._config.bot_token, base_url=self._config.api_url, timeout=5)
        try:
            client.chat_postEphemeral(channel=channel, user=user, text=text)
        except SlackApiError as err:
            log.warning("chat.postEphemeral failed: %s", err.response.get("error"))
        except (SlackClientError, OSError) as err:
            log.warning("chat.postEphemeral failed: %s", type(err).__name__)

    # --------------------------------------------------------------------------------------------- HTTP
    async def handle_http(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        """One request to the Request URL: (status, body). Answers within ``answer_within_seconds``."""
        lowered = {key.lower(): value for key, value in headers.items()}
        refusal = self._verifier.verify(body, lowered, time.time())
        form = parse_qs(body.decode("utf-8", "replace"))
        payload: dict[str, Any] | None = None
        try:
            payload = json.loads(form["payload"][0]) if "payload" in form else None
        except ValueError:
            payload = None
        if refusal is not None:
            log.warning("refused a request to %s: %s", ACTIONS_PATH, refusal.reason)
            if refusal.authentic and refusal.tell and payload is not None:
                try:
                    click = parse_click(payload)
                except NotOurs:
                    pass
                else:
                    await self._within_deadline(self.tell(click, refusal.tell))
            return 401, refusal.reason
        if "ssl_check" in form:
            return 200, ""
        if payload is None:
            return 400, "no interaction payload"
        await self._within_deadline(self.handle_payload(payload))
        return 200, ""

    async def _within_deadline(self, work: Coroutine[Any, Any, Any]) -> None:
        """Wait for the work up to Slack's deadline; past it, let it finish in the background."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.wait({task}, timeout=self._config.answer_within_seconds)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=UPDATE_TIMEOUT)
        await self._http.aclose()
