"""WebSocket framing of server messages, for transports that write bytes themselves.

A server's frames are not masked and budget_ws never compresses a native connection's
messages, so the bytes of one message are the same for every client: a fan-out frames
an event once and writes those bytes to each subscriber.
"""

from __future__ import annotations

import struct

__all__ = ["text_frame"]

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
_FIN_TEXT = 0x81
"""FIN set, opcode 1 (text): a whole message in one frame."""


def text_frame(text: str) -> bytes:
    """The one unmasked frame that carries ``text`` as a whole text message (RFC 6455 5.2)."""
    payload = text.encode("utf-8")
    length = len(payload)
    if length < 126:
        return _SHORT.pack(_FIN_TEXT, length) + payload
    if length < 65536:
        return _MEDIUM.pack(_FIN_TEXT, 126, length) + payload
    return _LONG.pack(_FIN_TEXT, 127, length) + payload
