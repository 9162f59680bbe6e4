"""A griffe extension: Sphinx roles as optional cross-references, and doctests as code blocks.

The docstrings name other objects with Sphinx roles. mkdocstrings' Markdown has no such roles, so
each becomes an optional autorefs link: a link where the object has an API page, plain code where
it has none (an optional reference never fails ``mkdocs build --strict``). A name without a dot
path is looked up in the module of the docstring that names it.

Doctest lines (``>>>`` and the output under them) outside an ``Examples:`` section would be read
as Markdown, where ``[...]`` is a link; they are fenced as ``pycon`` code.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Module, Object

ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|exc|obj):`(~?)([^`<>]+)`")


def _identifier(obj: Object, target: str) -> str:
    if target.startswith("padim"):
        return target
    try:
        return obj.module[target].path
    except (KeyError, ValueError, AttributeError):
        return target


def _replace(obj: Object, text: str) -> str:
    def link(match: re.Match) -> str:
        short, target = match.groups()
        shown = target.rsplit(".", 1)[-1] if short else target
        return f'<autoref identifier="{_identifier(obj, target)}" optional><code>{shown}</code></autoref>'

    return ROLE.sub(link, text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _fence_doctests(text: str) -> str:
    out: list[str] = []
    fence: str | None = None  # the open fence's indentation
    examples: int | None = None  # the indentation of an open Examples: section (griffe reads its doctests)
    for line in text.splitlines():
        stripped = line.lstrip()
        if examples is not None and stripped and _indent(line) <= examples:
            examples = None
        if stripped == "Examples:":
            examples = _indent(line)
        if fence is not None and (not stripped or not line.startswith(fence)):
            out.append(fence + "```")
            fence = None
        if fence is None and examples is None and stripped.startswith(">>>"):
            fence = line[: _indent(line)]
            out.append(fence + "```pycon")
        out.append(line)
    if fence is not None:
        out.append(fence + "```")
    return "\n".join(out)


def _walk(obj: Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
        obj.docstring.value = _fence_doctests(_replace(obj, obj.docstring.value))
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member, seen)


class SphinxRoles(Extension):
    """Rewrites the roles of every docstring once the package is loaded."""

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        _walk(pkg, set())
