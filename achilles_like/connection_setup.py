"""What every achilles_like connection does once it is made: server, node and controller alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from achilles_like import direct_reads, tcp
from achilles_like.frame_writer import FrameWriter
from achilles_like.liveness import enable_keepalive
from achilles_like.protocol.frames import FrameDecoder


def prepare(
    transport: Any, out: FrameWriter, decoder: FrameDecoder, on_read: Callable[[int], object] | None = None
) -> None:
    """Write through ``out``; tune the socket (no Nagle, larger sends, keepalive); read bodies straight.

    ``on_read(count)`` hears of body bytes read straight into ``decoder``'s buffer.
    """
    out.attach(transport)
    tcp.tune(transport)
    enable_keepalive(transport)
    direct_reads.install(transport, decoder, on_read)
