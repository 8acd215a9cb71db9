"""griffe extension for the API pages: the reStructuredText our docstrings use, as Markdown.

The docstrings are Google style with a few reStructuredText constructs (they are also read by
``help()`` and Sphinx-style tools). Before griffe parses a docstring this rewrites
``:math:`x``` to inline MathJax ``\\(x\\)``, a ``.. math::`` block to a display block,
``:func:`~mirroropt.adapt``` (and ``:class:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:``,
``:exc:``) to code, ``.. code-block:: python`` to a fenced block, and a singular ``Example:``
heading to griffe's ``Examples:`` section (so doctests render as code).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_MATH = re.compile(r":math:`([^`]*)`")
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`~?([^`]*)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


def _blocks(text: str) -> str:
    """``.. math::`` and ``.. code-block:: lang`` followed by an indented block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        directive = re.fullmatch(r"\.\. (math|code-block)::\s*(\w*)", stripped)
        if directive is None:
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        body: list[str] = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(indent + " ")):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        content = [
            b.strip() if directive.group(1) == "math" else b
            for b in body
            if b.strip() or directive.group(1) != "math"
        ]
        if directive.group(1) == "math":
            out += [indent + r"\[", *(indent + c for c in content), indent + r"\]", ""]
        else:
            depth = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
            out += [indent + "```" + (directive.group(2) or "python")]
            out += [indent + b[depth:] if b.strip() else "" for b in body]
            out += [indent + "```", ""]
    return "\n".join(out)


def rewrite(text: str) -> str:
    text = _blocks(text)
    text = _MATH.sub(lambda m: r"\(" + m.group(1) + r"\)", text)
    text = _ROLE.sub(lambda m: "`" + m.group(1) + "`", text)
    return _EXAMPLE.sub(r"\1Examples:", text)


class RstToMarkdown(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
