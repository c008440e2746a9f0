"""Block Kit's limits (api.slack.com/reference/block-kit), as Slack enforces them on a posted message."""

from __future__ import annotations

from typing import Any

# What every message posted to the stand-in is checked against.
BLOCK_TYPES = {"section", "header", "context", "actions", "divider", "image", "input", "rich_text"}


def block_kit_problems(blocks: Any, text: str | None = None) -> list[str]:
    """Every way a message breaks Slack's Block Kit limits (empty when Slack would accept it)."""
    problems: list[str] = []
    if text is not None and len(text) > 40_000:
        problems.append(f"text is {len(text)} characters (> 40000)")
    if blocks is None:
        return problems
    if not isinstance(blocks, list):
        return [*problems, "blocks is not a list"]
    if len(blocks) > 50:
        problems.append(f"{len(blocks)} blocks (> 50)")
    action_ids: list[str] = []
    for index, block in enumerate(blocks):
        where = f"blocks[{index}]"
        kind = block.get("type")
        if kind not in BLOCK_TYPES:
            problems.append(f"{where}: unknown type {kind!r}")
        if len(block.get("block_id", "")) > 255:
            problems.append(f"{where}: block_id > 255")
        if kind == "section":
            body = block.get("text")
            if body is None and not block.get("fields"):
                problems.append(f"{where}: section without text or fields")
            if body is not None:
                problems += _text_problems(body, 3000, f"{where}.text")
            fields = block.get("fields") or []
            if len(fields) > 10:
                problems.append(f"{where}: {len(fields)} fields (> 10)")
            for n, item in enumerate(fields):
                problems += _text_problems(item, 2000, f"{where}.fields[{n}]")
        elif kind == "header":
            problems += _text_problems(block.get("text"), 150, f"{where}.text", plain_only=True)
        elif kind == "context":
            elements = block.get("elements") or []
            if not 1 <= len(elements) <= 10:
                problems.append(f"{where}: {len(elements)} context elements (1..10)")
            for n, item in enumerate(elements):
                problems += _text_problems(item, 3000, f"{where}.elements[{n}]")
        elif kind == "actions":
            elements = block.get("elements") or []
            if not 1 <= len(elements) <= 25:
                problems.append(f"{where}: {len(elements)} action elements (1..25)")
            for n, item in enumerate(elements):
                problems += _button_problems(item, f"{where}.elements[{n}]")
                action_ids.append(item.get("action_id", ""))
    duplicates = {a for a in action_ids if action_ids.count(a) > 1}
    if duplicates:
        problems.append(f"duplicate action_id {sorted(duplicates)}")
    return problems


def _text_problems(obj: Any, limit: int, where: str, plain_only: bool = False) -> list[str]:
    if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
        return [f"{where}: not a text object"]
    if plain_only and obj["type"] != "plain_text":
        return [f"{where}: must be plain_text"]
    length = len(obj.get("text") or "")
    if length == 0:
        return [f"{where}: empty text"]
    return [f"{where}: {length} characters (> {limit})"] if length > limit else []


def _button_problems(button: dict[str, Any], where: str) -> list[str]:
    if button.get("type") != "button":
        return [f"{where}: not a button"]
    problems = _text_problems(button.get("text"), 75, f"{where}.text", plain_only=True)
    if len(button.get("value", "")) > 2000:
        problems.append(f"{where}: value > 2000")
    if not 1 <= len(button.get("action_id", "")) <= 255:
        problems.append(f"{where}: action_id length")
    if len(button.get("url", "")) > 3000:
        problems.append(f"{where}: url > 3000")
    if button.get("style") not in (None, "primary", "danger"):
        problems.append(f"{where}: style {button.get('style')!r}")
    confirm = button.get("confirm")
    if confirm is not None:
        problems += _text_problems(confirm.get("title"), 100, f"{where}.confirm.title", plain_only=True)
        problems += _text_problems(confirm.get("text"), 300, f"{where}.confirm.text")
        problems += _text_problems(confirm.get("confirm"), 30, f"{where}.confirm.confirm", plain_only=True)
        problems += _text_problems(confirm.get("deny"), 30, f"{where}.confirm.deny", plain_only=True)
    return problems
