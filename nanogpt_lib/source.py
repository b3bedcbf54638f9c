"""The library's own code, shown in a notebook where the text teaches it.

    show_source(CausalSelfAttention.forward)       one function or method
    show_source(GPT, "generate")                   one method of a class, by name
    show_source(route, docstring=False)            the body without its docstring
    show_source(Block.forward, lines="self.mlp")   only the lines holding a piece of text

The code is read with `inspect` from the installed package each time the cell runs, so the page can
never show an outdated copy. The result renders as a syntax-highlighted Python block (Markdown, which
JupyterLab, Voila and the blog's posts all highlight); its plain-text form is one stable line naming
what is shown, so a notebook's test does not break on a line the library changes elsewhere.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """A piece of the library's source: `name` (module.qualname) and `code` (dedented text)."""

    name: str
    code: str

    def _repr_markdown_(self) -> str:
        fence = "```"
        while fence in self.code:
            fence += "`"
        return f"`{self.name}`\n\n{fence}python\n{self.code}\n{fence}\n"

    def __repr__(self) -> str:
        count = len(self.code.splitlines())
        return f"<source of {self.name}: {'one line' if count == 1 else 'several lines'}>"

    def __str__(self) -> str:
        return self.code


def _target(obj, member: str | None):
    if member is None:
        return obj
    if not inspect.isclass(obj):
        raise TypeError(f"member={member!r} picks a method of a class; {obj!r} is not a class")
    try:
        found = inspect.getattr_static(obj, member)
    except AttributeError:
        raise AttributeError(f"{obj.__qualname__} has no attribute {member!r}") from None
    return found.__func__ if isinstance(found, (staticmethod, classmethod)) else found


def _without_docstring(code: str) -> str:
    """`code` (one def or class) with its docstring lines taken out."""
    tree = ast.parse(code)
    node = tree.body[0]
    if not (node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
            and isinstance(node.body[0].value.value, str)):
        return code
    doc = node.body[0]
    lines = code.splitlines()
    return "\n".join(lines[: doc.lineno - 1] + lines[doc.end_lineno:])


def show_source(obj, member: str | None = None, *, docstring: bool = True, lines: str | None = None) -> Source:
    """The source of a function, method or class of the library, ready for a notebook to display.

    `member` picks one method (or property) of the class `obj` by name. `docstring=False` leaves the
    docstring out. `lines` keeps only the lines containing that text (the `def` line is kept too, so
    the reader sees where they come from); a text found nowhere is an error, never an empty block.
    """
    target = _target(obj, member)
    if isinstance(target, property):
        target = target.fget
    try:
        code = textwrap.dedent(inspect.getsource(target)).rstrip("\n")
    except TypeError:
        raise TypeError(f"{obj!r} has no Python source to show (a built-in or a value?)") from None
    if not docstring:
        code = _without_docstring(code)
    if lines is not None:
        all_lines = code.splitlines()
        first_body_line = ast.parse(code).body[0].body[0].lineno - 1  # decorators and signature above it
        picked = [line for line in all_lines[first_body_line:] if lines in line]
        if not picked:
            raise ValueError(f"no line of {getattr(target, '__qualname__', target)} contains {lines!r}")
        code = "\n".join(all_lines[:first_body_line] + ["    ..."] + picked)
    module = getattr(target, "__module__", None) or getattr(obj, "__module__", "")
    qualname = getattr(target, "__qualname__", None) or f"{obj.__qualname__}.{member}"
    return Source(name=f"{module}.{qualname}", code=code)
