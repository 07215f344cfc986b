"""Text that is safe to store and to answer with: valid UTF-8 and bounded in length.

Text that comes from outside (an origin's headers, an exception's message) may hold lone
surrogates, which neither SQLite nor JSON encoders accept, and may be of any length.
"""

from __future__ import annotations

import re

# Long enough for a message that quotes a URL of the longest accepted length.
MAX_MESSAGE_CHARS = 2500
ELLIPSIS = "..."
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def is_utf8_text(text: str) -> bool:
    """True when `text` encodes as UTF-8: no lone surrogate (`"\\ud800"`) anywhere in it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` with every lone surrogate replaced by U+FFFD and cut to `limit` characters."""
    if not is_utf8_text(text):
        text = LONE_SURROGATE.sub("\ufffd", text)
    if len(text) > limit:
        text = text[: limit - len(ELLIPSIS)] + ELLIPSIS
    return text
