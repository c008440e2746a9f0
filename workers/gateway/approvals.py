"""Clicks to the runs' Updates, refusals to ephemeral messages: what both modes of the gateway share.

The gateway holds no approval rule: the workflow's validator decides, and its refusal reaches the clicker
verbatim. Slack wants an answer within 3 s, so the Request URL answers within ``answer_within_seconds`` and
lets a slower click finish in the background.

With a gateway key (``DRFLOW_GATEWAY_KEY``) every click is attested: "Slack user U.. clicked approve on run
R, gate G, plan P", signed, so a runbook with a people file can verify who answered. Only what the button
itself names is attested: a button posted before buttons carried the full plan checksum is sent unsigned,
and the workflow's own policy decides what an unsigned answer gets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
from pydantic import ValidationError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.approvals.signatures import SIGNED_ANSWER
from workers.gateway.clicks import Answer, Click, ClickOutcome, NotOurs, parse_click
from workers.gateway.config import GatewayConfig
from workers.gateway.verification import RequestVerifier
from workflows.failover_models import DecisionInput, UpdateOutcome

log = logging.getLogger("drflow.gateway")

ACTIONS_PATH = "/slack/actions"
UPDATE_TIMEOUT = 30.0
LOOKUP_TIMEOUT = 5.0
FULL_CHECKSUM = re.compile(r"[0-9a-f]{64}")
UNATTESTED = (
    "this message's buttons come from an older drflow and do not name the full plan (or the run) you saw, "
    "so the gateway could not vouch for your click: answer with `drflow {command} --as <you>`"
)


class ApprovalGateway:
    """Turns clicks into Updates and refusals into ephemeral messages; shared by both modes."""

    def __init__(self, client: Client, config: GatewayConfig) -> None:
        self._client = client
        self._config = config
        self._verifier = RequestVerifier(config.signing_secret, config.max_age_seconds)
        self._http = httpx.AsyncClient(timeout=5.0, trust_env=True)
        self._tasks: set[asyncio.Task[Any]] = set()
        if config.signer is None:
            log.warning(
                "no gateway key (DRFLOW_GATEWAY_KEY, DRFLOW_GATEWAY_NAME): Slack answers are sent unsigned, "
                "so runs with a people file record them as unverified or refuse them"
            )
        else:
            log.info("Slack answers are attested by gateway %s", config.signer.name)

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
        answer, run_id, unattested = await self._attested(click, answer)
        handle = self._client.get_workflow_handle(click.workflow_id, run_id=run_id)
        outcome = await self._execute(click, handle, answer)
        if not outcome.accepted and unattested is not None:
            return ClickOutcome(False, f"{outcome.message}; {unattested}")
        return outcome

    async def _attested(self, click: Click, answer: Answer) -> tuple[Answer, str | None, str | None]:
        """The answer signed by the gateway key, the run it goes to, and why it is unsigned (None: it is
        signed, or there is no key and so nothing to explain)."""
        signer = self._config.signer
        run_id = click.run_id
        if signer is None:
            return answer, run_id, None
        command = (
            f"decide {click.workflow_id} {click.decision}"
            if click.update == "decide"
            else f"{click.update.replace('_', '-')} {click.workflow_id}"
        )
        why = UNATTESTED.format(command=command)
        checksum = click.plan_checksum
        if click.update == "decide":
            if run_id is None or click.step is None or click.decision is None:
                return answer, run_id, why  # a step name alone could be any run's: never attested so
        else:
            if checksum is None or not FULL_CHECKSUM.fullmatch(checksum):
                return await self._expanded(click, answer), run_id, why
            if run_id is None:
                # Safe to look up: the full checksum binds the plan, and the workflow refuses any other.
                run_id = await self._current_run(click.workflow_id)
                if run_id is None:
                    return answer, None, why
        assert run_id is not None
        try:
            if isinstance(answer, DecisionInput):
                signed, signature = signer.attest(
                    workflow_id=click.workflow_id, run_id=run_id, slack_user=click.user_id,
                    now=datetime.now(UTC), decision=answer.decision, failed_step=answer.step,
                )  # fmt: skip
            else:
                signed, signature = signer.attest(
                    workflow_id=click.workflow_id, run_id=run_id, slack_user=click.user_id,
                    now=datetime.now(UTC), decision=SIGNED_ANSWER[click.update], gate=answer.gate,
                    plan_checksum=checksum,
                )  # fmt: skip
        except ValidationError as err:
            log.warning("could not attest a click of %s: %s", click.workflow_id, err.errors()[0]["msg"])
            return answer, run_id, why
        return answer.model_copy(update={"signed": signed, "signature": signature}), run_id, None

    async def _current_run(self, workflow_id: str) -> str | None:
        try:
            described = await asyncio.wait_for(
                self._client.get_workflow_handle(workflow_id).describe(), LOOKUP_TIMEOUT
            )
        except (RPCError, TimeoutError):
            return None
        return described.run_id

    async def _expanded(self, click: Click, answer: Answer) -> Answer:
        """An old button's checksum prefix as the open gate's full checksum, when it is a prefix of it.

        This keeps old buttons working for runs that accept unsigned answers (as a prefix did before); it
        is never attested, because the message did not show the full checksum.
        """
        prefix = click.plan_checksum
        if not prefix or isinstance(answer, DecisionInput):
            return answer
        handle = self._client.get_workflow_handle(click.workflow_id, run_id=click.run_id)
        try:
            report = await asyncio.wait_for(handle.query("status"), LOOKUP_TIMEOUT)
        except (RPCError, TimeoutError, WorkflowQueryFailedError):
            return answer
        if not isinstance(report, dict) or report.get("open_gate") != click.gate:
            return answer
        plan = report.get("plan")
        full = report.get("gate_checksum") or (plan.get("checksum") if isinstance(plan, dict) else None)
        if isinstance(full, str) and FULL_CHECKSUM.fullmatch(full) and full.startswith(prefix):
            return answer.model_copy(update={"plan_checksum": full})
        return answer

    async def _execute(self, click: Click, handle: WorkflowHandle[Any, Any], answer: Answer) -> ClickOutcome:
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
