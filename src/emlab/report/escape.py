"""Make untrusted text (model answers, question text, names) inert in Markdown and HTML.

Model answers come from a model that may have been fine-tuned into misbehaving, so they are
treated as hostile: they must not close a table or code block, add a link or inject HTML.
"""

from __future__ import annotations

import html
import re

# CommonMark lets any ASCII punctuation be backslash-escaped; these are the characters that
# start emphasis, links, images, code, headings, lists, tables, setext underlines, strike-
# through, or (``.`` and ``:``) GFM bare-URL/email autolinks. ``& < >`` become entities.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~=:])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def normalise(text: object) -> str:
    """Text with CR/LF made LF and control characters (other than tab and newline) made U+FFFD."""
    s = "" if text is None else str(text)
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("\ufffd", s)


def md_text(text: object, max_chars: int | None = None) -> str:
    """One line of Markdown that displays ``text`` literally (newlines become ``<br>``).

    Safe inside a table cell or a paragraph: the result has no raw newline, so it cannot
    start a new block (code fence, heading, table row), and every character that could
    open markup is escaped.
    """
    s = normalise(text)
    if max_chars is not None and len(s) > max_chars:
        s = s[:max_chars] + " …[truncated]"
    s = _MD_SPECIAL.sub(r"\\\1", s)
    s = html.escape(s, quote=False)  # after the backslashes, so no entity gets a "\#"
    return s.replace("\n", "<br>")


def html_text(text: object, max_chars: int | None = None) -> str:
    """``text`` escaped for HTML element content or a quoted attribute value."""
    s = normalise(text)
    if max_chars is not None and len(s) > max_chars:
        s = s[:max_chars] + " …[truncated]"
    return html.escape(s, quote=True)
