"""The wire protocol: frame format and handshake, pure Python with no I/O.

Nothing here imports Twisted, sockets, threads or a clock (a test checks it):
bytes go in, frames and bytes to send come out. ``docs/protocol.md``
describes every verb.
"""

from __future__ import annotations

from achilles_like.protocol.frames import Frame, FrameDecoder, encode_frame, encode_header
from achilles_like.protocol.handshake import (
    PROTOCOL_VERSION,
    ClientHandshake,
    HandshakeState,
    Identity,
    ServerHandshake,
)

__all__ = [
    "PROTOCOL_VERSION",
    "ClientHandshake",
    "Frame",
    "FrameDecoder",
    "HandshakeState",
    "Identity",
    "ServerHandshake",
    "encode_frame",
    "encode_header",
]
