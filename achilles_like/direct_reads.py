"""Large bodies read from the socket straight into their buffer.

Twisted reads into a new ``bytes`` and hands it to ``dataReceived``, where
the frame decoder copies it into the body's buffer: every byte of a large
body is copied once more than it needs to be, at every hop. While a body
larger than a small read is arriving on a plain TCP connection,
:func:`install` makes the transport ``recv_into`` the decoder's own buffer
(:meth:`FrameDecoder.body_view`) instead, then calls ``dataReceived(b"")``
so the protocol sees the frame once it is whole, exactly as if it had come
through ``dataReceived``. Between bodies Twisted's own read runs unchanged.
A body the decoder streams to a sink (``FrameDecoder.stream_body``) has no
buffer to read into: Twisted's read takes it, :data:`STREAM_READ` at a time.
On TLS connections, whose bytes must be decrypted first, Twisted's read of
the socket under TLS runs, sized by :func:`achilles_like.tcp.size_reads`:
large while a large body is arriving, 64 KiB otherwise.

A peer can make a connection read straight only as much as it announced
within the frame limits, and only after it has authenticated: before that,
every body is held to 64 KiB, a small read.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.internet import main, tcp

from achilles_like.protocol.frames import FrameDecoder
from achilles_like.tcp import SMALL_READ, size_reads

_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
# A streamed body's reads: each is a new bytes object that lives until its sink has used it,
# so this bounds what a read adds to the sink's window; 1 MiB keeps a read's cost per byte low.
STREAM_READ = 1 << 20


def install(transport: Any, decoder: FrameDecoder, on_read: Callable[[int], object] | None = None) -> None:
    """Make ``transport`` read large bodies straight into ``decoder``'s buffer (plain TCP only).

    ``on_read(count)`` hears of the bytes read so (``dataReceived`` is called with none).
    Over TLS the socket is read by Twisted, in pieces sized to the body arriving.
    """
    if not isinstance(transport, tcp.Connection):
        _install_sized(getattr(transport, "transport", None), decoder)
        return
    twisted_read = transport.doRead
    sock = transport.socket

    def do_read() -> Any:
        if decoder.body_missing <= SMALL_READ or decoder.error is not None:
            return twisted_read()
        if decoder.streaming:
            transport.bufferSize = min(decoder.body_missing, STREAM_READ)
            try:
                return twisted_read()
            finally:
                transport.bufferSize = SMALL_READ
        view = decoder.body_view()
        try:
            count = sock.recv_into(view)
        except OSError as error:
            return None if error.errno in _RETRY else main.CONNECTION_LOST
        finally:
            view.release()
        if count == 0:
            return main.CONNECTION_DONE
        decoder.body_advance(count)
        if on_read is not None:
            on_read(count)
        transport.protocol.dataReceived(b"")
        return None

    transport.doRead = do_read  # type: ignore[method-assign]  # the reactor calls the instance's doRead


def _install_sized(inner: Any, decoder: FrameDecoder) -> None:
    """Under TLS: size each read of the socket to the body arriving (a test's transport: nothing)."""
    if not isinstance(inner, tcp.Connection):
        return
    twisted_read = inner.doRead

    def do_read() -> Any:
        size_reads(inner, decoder.body_missing)
        return twisted_read()

    inner.doRead = do_read  # type: ignore[method-assign]  # the reactor calls the instance's doRead
