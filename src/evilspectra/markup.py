"""Untrusted strings in the markdown and HTML the project writes.

Module and tensor names, question ids and text, answers, paths, labels and optimiser names come from
users' files (a crafted tensor name, a question id in a YAML), and a Hub model card is rendered with
raw HTML allowed. So every such string is escaped where it is inserted into markdown (`text`, or
`code` for a code span) and our own markdown is rendered to HTML with raw HTML off (`to_html`).
"""

from __future__ import annotations

import html
import re
from typing import Any

from markdown_it import MarkdownIt

# markdown punctuation that can open emphasis, links, images, code, tables or escapes
_MARKDOWN = re.compile(r"([\\`*_\[\]|!~])")
_BACKTICKS = re.compile(r"`+")


def _one_line(value: Any) -> str:
    """A newline in a table row or list item would start a new block (an HTML block, a heading)."""
    return " ".join(str(value).split())


def text(value: Any) -> str:
    """`value` as literal text in markdown: markdown punctuation backslash-escaped, <, > and & as
    entities (which every CommonMark renderer shows as the characters, never as tags)."""
    return html.escape(_MARKDOWN.sub(r"\\\1", _one_line(value)), quote=False)


def code(value: Any, cell: bool = False) -> str:
    """`value` as a code span: its content is literal to any renderer; the fence is longer than any
    run of backticks inside, so the value cannot close it. `cell`: inside a table row, where GFM
    splits on every unescaped | (also inside code spans)."""
    value = _one_line(value)
    fence = "`" * (max((len(m) for m in _BACKTICKS.findall(value)), default=0) + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    span = f"{fence}{pad}{value}{pad}{fence}"
    return span.replace("|", "\\|") if cell else span


def to_html(markdown: str) -> str:
    """CommonMark + tables to HTML with raw HTML off: a tag in the text is shown, never parsed."""
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
