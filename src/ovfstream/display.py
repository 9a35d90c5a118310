"""Text from a package, made safe to show on a terminal.

Names, annotations, product strings, member names, ``ddb.*`` values and the file names inside
findings come from untrusted packages.  Sent raw, an ESC or CSI (0x1b, 0x9b) rewrites the
screen, a carriage return or a bidi override hides what precedes it, and rich markup such as
``[red on red]`` or ``[link=...]`` hides text or plants links.  Every human-readable line the
CLI prints goes through :func:`printable`; rich renderables are built with :func:`rich_text`,
which never parses markup.  ``--json`` output needs neither: JSON escapes its strings.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported only by the paths that draw with it
    from rich.text import Text

__all__ = ["printable", "rich_text"]

# C0, DEL, C1 (CSI 0x9b among them), the bidi embeddings/overrides/isolates and marks, the
# line/paragraph separators, and lone surrogates (undecodable file-name bytes, which a UTF-8
# stdout would refuse with a traceback).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                     "\u2066-\u2069\ud800-\udfff]")


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group())
    return "\\x%02x" % code if code < 0x100 else "\\u%04x" % code


def printable(text: object) -> str:
    """``str(text)`` with every character a terminal would act on shown as ``\\xNN``/``\\uNNNN``."""
    return _UNSAFE.sub(_escape, str(text))


def rich_text(text: object, style: str = "") -> "Text":
    """A rich Text of printable(text): shown literally, markup and emoji codes included."""
    from rich.text import Text
    return Text(printable(text), style=style)
