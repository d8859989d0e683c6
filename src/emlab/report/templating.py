"""The one template engine of emlab's documents: Jinja2, with escaping as the default.

Two environments over the templates shipped in ``emlab/report/templates``:

- HTML: autoescape on, so every ``{{ value }}`` is element text or a quoted attribute value;
  ``finalize`` first normalises the text (control characters, CR/LF) as
  :func:`emlab.report.escape.html_text` does;
- Markdown: ``finalize`` is :func:`emlab.report.escape.md_text`, so every value becomes one
  escaped line that cannot open markup or start a new block.

In both, only the template's own text is markup, plus values a caller marks ``trusted``
(constants such as the page's style and script). A template never sees raw model text as
markup, whatever the model wrote — including ``{{ ... }}``, which is data, not template.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from emlab.report.escape import normalise, md_text

TRUNCATED = " …[truncated]"


def _clip(value: Any, max_chars: int | None = None) -> Any:
    if value is None:
        return ""
    if isinstance(value, Markup) or max_chars is None:
        return value
    s = str(value)
    return s[:max_chars] + TRUNCATED if len(s) > max_chars else s


def _trusted(value: Any) -> Markup:
    """Mark a constant of ours (never model text) as markup."""
    return Markup(value)


def _html_finalize(value: Any) -> Any:
    if value is None:
        return ""
    return value if isinstance(value, Markup) else normalise(value)


def _md_finalize(value: Any) -> Any:
    if value is None:
        return ""
    return value if isinstance(value, Markup) else md_text(value)


def _env(kind: str) -> Environment:
    env = Environment(loader=PackageLoader("emlab.report", "templates"),
                      autoescape=kind == "html", undefined=StrictUndefined,
                      finalize=_html_finalize if kind == "html" else _md_finalize,
                      keep_trailing_newline=True)
    env.filters.update(clip=_clip, trusted=_trusted,
                       b64=lambda b: Markup(base64.b64encode(b).decode("ascii")),
                       hashes=lambda n: Markup("#" * int(n)))
    env.globals["nl"] = Markup("\n")
    return env


@lru_cache(maxsize=None)
def environment(kind: str) -> Environment:
    """The ``"html"`` or ``"md"`` environment (built once)."""
    if kind not in ("html", "md"):
        raise ValueError(f"unknown document kind {kind!r}")
    return _env(kind)


def render(template: str, **context: Any) -> str:
    """Render ``template`` (``*.html.j2`` autoescaped as HTML, ``*.md.j2`` as Markdown)."""
    kind = "md" if template.endswith(".md.j2") else "html"
    return environment(kind).get_template(template).render(**context)
