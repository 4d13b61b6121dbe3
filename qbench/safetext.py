"""User strings on their way out: one place that makes them safe for a terminal and for Markdown.

A run's tag, a prompt, a label or an option value is text someone typed. Printed raw, an escape
sequence in it recolours the terminal, moves the cursor or sets the window title (``ESC ] 0 ;
... BEL``); in a Markdown report an HTML tag in it is rendered as HTML. So:

* :func:`clean` drops every control character but newline and tab (C0 ``U+0000-001F``, DEL
  ``U+007F``, C1 ``U+0080-009F``) and the Unicode bidirectional overrides and isolates
  (``U+202A-202E``, ``U+2066-2069``, the "Trojan Source" characters). What was printable stays,
  so ``ESC[31m`` shows as the harmless ``[31m``.
* :class:`SafeConsole` is a ``rich`` console that passes every piece of text it writes through
  :func:`clean` (rich's own styles and cursor movement, which it emits as separate control
  segments, are kept). Every console qbench prints with comes from :func:`console`.
* :func:`md` is :func:`clean` plus escaping for a Markdown table cell or line: ``& < >`` as HTML
  entities (so no tag is rendered), ``\\ | * _ ` [ ]`` backslash-escaped, newlines as spaces.

Control characters take no cell in rich's width count, so dropping them after layout keeps
tables aligned.
"""
from __future__ import annotations

import re
from typing import Any

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_MD = re.compile(r"([\\|*_`\[\]])")


def clean(text: Any) -> str:
    """``str(text)`` without control characters (newline and tab kept) and bidi overrides."""
    return _CONTROL.sub("", str(text))


def md(text: Any) -> str:
    """``text`` for Markdown: :func:`clean`, HTML entities for ``& < >``, backslashes before the
    characters Markdown gives a meaning inside a line (``\\ | * _ ` [ ]``), newlines as spaces."""
    s = clean(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD.sub(r"\\\1", s).replace("\r", " ").replace("\n", " ")


def _safe_console_class():
    from rich.console import Console
    from rich.segment import Segment

    class SafeConsole(Console):
        """A ``rich.console.Console`` whose written text never carries a control character."""

        def _render_buffer(self, buffer):  # rich's single exit for text: style codes are added here
            return super()._render_buffer(seg if seg.control else Segment(clean(seg.text), seg.style) for seg in buffer)

    return SafeConsole


_CLASS = None


def console(**kwargs: Any):
    """A :class:`SafeConsole` (``rich.console.Console`` arguments)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _safe_console_class()
    return _CLASS(**kwargs)


def say(text: Any, file: Any = None) -> None:
    """``print(clean(text))`` for the few plain lines printed without rich."""
    print(clean(text), file=file)
