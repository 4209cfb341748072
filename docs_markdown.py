"""The docs' own Python-Markdown extension: math rendered to MathML at build time, Sphinx roles as code.

Listed under ``markdown_extensions`` in ``mkdocs.yml`` (as ``docs_markdown``), so it runs wherever Python-Markdown
renders a page or a docstring, with Zensical as with MkDocs (neither needs a plugin or a hook for it):

* **Math.** ``pymdownx.arithmatex`` (``generic: true``) finds ``$...$``, ``$$...$$``, ``\\(...\\)`` and ``\\[...\\]``
  and wraps the LaTeX in ``<span class="arithmatex">`` / ``<div class="arithmatex">``. This extension replaces
  that LaTeX with MathML (``latex2mathml``), which browsers draw natively: the pages need no JavaScript and
  no network to show a formula. LaTeX that does not convert fails the build, naming the formula.
* **Sphinx roles** in docstrings (:func:`x`, :meth:`~a.b`) are rendered as plain code (``~`` keeps the last
  dotted part, as Sphinx does).
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET

from latex2mathml.converter import convert
from markdown import Extension, Markdown
from markdown.postprocessors import Postprocessor

# arithmatex's generic output, after the raw-HTML stash is restored: \( inline \) in a span, \[ block \] in a div
_MATH = re.compile(r'<(span|div) class="arithmatex">\\([(\[])(.*?)\\[)\]]</\1>', re.DOTALL)
_ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|obj):<code>(~?)([^<]*)</code>")


# MathML elements that take a fixed number of children (latex2mathml leaves one out for \frac{a})
_ARITY = {"mfrac": 2, "msub": 2, "msup": 2, "mover": 2, "munder": 2, "mroot": 2, "msubsup": 3, "munderover": 3}


class MathError(ValueError):
    """A formula that cannot be rendered faithfully as MathML."""


def _problem(latex: str, mathml: str) -> str | None:
    """What is wrong with ``latex`` or its conversion, or None: latex2mathml is lenient and never says."""
    depth = 0
    for brace in re.findall(r"(?<!\\)[{}]", latex):
        depth += 1 if brace == "{" else -1
        if depth < 0:
            return "a '}' closes no '{'"
    if depth:
        return f"{depth} unclosed '{{'"
    for node in ET.fromstring(mathml).iter():
        tag = node.tag.rsplit("}", 1)[-1]
        if tag in _ARITY and len(node) != _ARITY[tag]:
            return f"<{tag}> got {len(node)} of its {_ARITY[tag]} arguments"
        if tag in ("mi", "mo", "mn", "mtext") and node.text and "\\" in node.text:
            return f"unknown command {node.text}"
    return None


def latex_to_mathml(latex: str, block: bool) -> str:
    """One formula (LaTeX without delimiters) as a ``<math>`` element, ``display="block"`` or ``"inline"``.

    MathError names the formula when it does not convert, or converts to something else than it says: an
    unbalanced brace, a missing argument, an unknown command (which would show as raw LaTeX).
    """
    latex = latex.strip()
    try:
        mathml = convert(latex, display="block" if block else "inline")
    except Exception as exc:  # latex2mathml raises its own exception types, and some plain ones
        raise MathError(f"cannot render the formula {latex!r} as MathML: {type(exc).__name__} {exc}") from exc
    problem = _problem(latex, mathml)
    if problem is not None:
        raise MathError(f"cannot render the formula {latex!r} as MathML: {problem}")
    return mathml


def _math(match: re.Match) -> str:
    tag, opener, escaped = match.groups()
    mathml = latex_to_mathml(html.unescape(escaped), block=opener == "[")
    return f'<{tag} class="arithmatex">{mathml}</{tag}>'


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


class _Rewrite(Postprocessor):
    """Runs after the raw-HTML stash (where arithmatex keeps its output) has been put back."""

    def run(self, text: str) -> str:
        return _ROLE.sub(_role, _MATH.sub(_math, text))


class DocsExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        md.postprocessors.register(_Rewrite(md), "arraycnn_docs", 5)  # raw HTML is restored at priority 30


def makeExtension(**kwargs: object) -> DocsExtension:
    return DocsExtension(**kwargs)
