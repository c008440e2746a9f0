"""One format-neutral document (headings, paragraphs, lists, tables) and its Markdown and HTML writers.

The Markdown and HTML reports are two writings of the same blocks, so they never disagree.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[tuple[str, list[str]]] = field(default_factory=list)

    def add(self, text: str, *children: str) -> None:
        self.items.append((text, list(children)))


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


Block = Heading | Para | Bullets | Table


# ------------------------------------------------------------------------------------------ markdown
def _md_text(text: str) -> str:
    return " ".join(text.replace("<", "&lt;").split())


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|") or " "


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + _md_text(block.text), ""]
        elif isinstance(block, Para):
            out += [_md_text(block.text), ""]
        elif isinstance(block, Bullets):
            for text, children in block.items:
                out.append(f"- {_md_text(text)}")
                out += [f"  - {_md_text(child)}" for child in children]
            out.append("")
        else:
            out.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            out.append("|" + "|".join("---" for _ in block.header) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------- html
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#1f2328}
table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #d0d7de;padding:.25rem .5rem;
vertical-align:top;text-align:left}th{background:#f6f8fa}code{background:#f6f8fa;padding:0 .2rem}
li{margin:.15rem 0}
"""


def _inline(text: str) -> str:
    escaped = html.escape(" ".join(text.split()), quote=True)
    return _BOLD.sub(r"<strong>\1</strong>", _CODE.sub(r"<code>\1</code>", escaped))


def to_html(blocks: list[Block], title: str) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            out.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            out.append("<ul>")
            for text, children in block.items:
                sub = "".join(f"<li>{_inline(c)}</li>" for c in children)
                out.append(f"<li>{_inline(text)}" + (f"<ul>{sub}</ul>" if sub else "") + "</li>")
            out.append("</ul>")
        else:
            out.append("<table>")
            if any(block.header):
                out.append("<tr>" + "".join(f"<th>{_inline(h)}</th>" for h in block.header) + "</tr>")
            for row in block.rows:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
