"""MkDocs hook: render the Sphinx roles in docstrings (:func:`x`, :meth:`~a.b`) as plain code."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|obj):<code>(~?)([^<]*)</code>")


def _code(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **_: object) -> str:
    return _ROLE.sub(_code, html)
