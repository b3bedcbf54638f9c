"""Rewrites of a notebook's Markdown for kramdown, applied to prose only (never inside code or math).

Jupyter renders `$...$` inline and `$$...$$` displayed; kramdown knows only `$$...$$` (inline inside a
paragraph, displayed when alone), so inline math is doubled. Links are rewritten by a caller-supplied
function, and the notebook's title heading is taken out (the post layout shows the title).
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Spans that prose rewrites must not touch, leftmost first: fenced code blocks, code spans, $$ math,
# then $ math (not after a backslash or a $, no space just inside the dollars, no backtick inside,
# no digit after: "costs $5 and $10" stays text).
_PROTECTED = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[^\n]*\n.*?^[ \t]*(?P=fence)[ \t]*$"
    r"|(?P<ticks>`+).+?(?P=ticks)"
    r"|\$\$.+?\$\$"
    r"|(?<![\\$])\$(?P<inline>[^\s$`](?:[^$`]*?[^\s\\$`])?)\$(?![$\d])",
    re.MULTILINE | re.DOTALL,
)
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")

# Link targets: [text](target), ![alt](target), [label]: target, and src= / href= in inline HTML.
_LINK_TARGETS = (
    re.compile(r"(?P<head>!?\[[^\]\n]*\]\([ \t]*<?)(?P<target>[^\s)>]+)"),
    re.compile(r"^(?P<head>[ ]{0,3}\[[^\]\n]+\]:[ \t]*<?)(?P<target>[^\s>]+)", re.MULTILINE),
    re.compile(r"(?P<head>\b(?:src|href)[ \t]*=[ \t]*[\"'])(?P<target>[^\"'\s]+)", re.IGNORECASE),
)
_HEADING = re.compile(r"^#{1,6}[ \t]+(?P<text>.+?)[ \t]*#*[ \t]*$\n*", re.MULTILINE)


def _mask(source: str) -> tuple[str, list[re.Match]]:
    """`source` with each protected span replaced by a numbered placeholder, and the spans."""
    spans: list[re.Match] = []

    def hide(match: re.Match) -> str:
        spans.append(match)
        return f"\x00{len(spans) - 1}\x00"

    return _PROTECTED.sub(hide, source), spans


def _unmask(text: str, spans: list[re.Match], render: Callable[[re.Match], str] = lambda m: m.group(0)) -> str:
    return _PLACEHOLDER.sub(lambda m: render(spans[int(m.group(1))]), text)


def _kramdown_span(span: re.Match) -> str:
    inline = span.group("inline")
    if inline is None or "\n\n" in inline:  # not $ math, or a lone $ in two paragraphs: unchanged
        return span.group(0)
    return f"$${inline}$$"


def transform_prose(source: str, rewrite: Callable[[str], str] = lambda text: text, *,
                    kramdown_math: bool = True) -> str:
    """`source` with `rewrite` applied to everything outside code and math, and (unless `kramdown_math` is
    False) inline math made kramdown's."""
    masked, spans = _mask(source)
    return _unmask(rewrite(masked), spans, _kramdown_span if kramdown_math else lambda m: m.group(0))


def rewrite_link_targets(text: str, resolve: Callable[[str], str]) -> str:
    """Every link and image target in `text` replaced by `resolve(target)`."""
    for pattern in _LINK_TARGETS:
        text = pattern.sub(lambda m: m.group("head") + resolve(m.group("target")), text)
    return text


def pop_title(source: str) -> tuple[str | None, str]:
    """(the first heading as plain text, `source` without that heading), or (None, `source`) if it has none."""
    masked, spans = _mask(source)
    match = _HEADING.search(masked)
    if match is None:
        return None, source
    title = _unmask(match.group("text"), spans)
    rest = _unmask(masked[: match.start()] + masked[match.end() :], spans)
    return re.sub(r"[`*]", "", title).strip(), rest
