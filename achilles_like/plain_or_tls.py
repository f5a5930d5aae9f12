"""Telling at once that one side speaks TLS and the other does not.

In this protocol the server speaks first (HELLO), and a TLS server waits for
the client to speak first (ClientHello): a plain client and a TLS server
would wait for each other until a timeout. So every node and controller
opens with :data:`PREAMBLE`, a few blank lines that an achilles_like server
ignores (``frames.py`` skips blank lines between frames) and that a TLS
server rejects as a malformed record at once. The other mismatch, a TLS
client and a plain server, fails at once by itself (the server's HELLO is no
TLS record); :func:`explain_early_close` turns either into a message that
says which setting to change.
"""

from __future__ import annotations

from twisted.python.failure import Failure

# Six bytes: more than a TLS record header (5), so a TLS server judges it now.
PREAMBLE = b"\r\n\r\n\r\n"


def is_tls_failure(reason: Failure) -> bool:
    """Whether a connection ended because the TLS layer failed."""
    try:
        from OpenSSL.SSL import Error as TlsError
    except ImportError:
        return False
    return reason.check(TlsError) is not None  # type: ignore[no-untyped-call]


def server_is_plain(reason: Failure) -> bool:
    """Whether a TLS connection failed because the server answered without TLS."""
    # OpenSSL's words for a first record that is not TLS at all (the server's HELLO line).
    text = reason.getErrorMessage()
    return is_tls_failure(reason) and any(
        words in text for words in ("wrong version number", "packet length too long", "record layer failure")
    )


def explain_early_close(reason: Failure, client_tls: bool) -> str:
    """Why a connection closed before the handshake ended, with what to change."""
    if client_tls and server_is_plain(reason):
        return (
            "the server does not use TLS but this side does: drop TLS_CA (and ACHILLES_TLS) here,"
            " or start the server with TLS_CERT and TLS_KEY"
        )
    if client_tls and is_tls_failure(reason):
        return (
            f"TLS with the server failed ({reason.getErrorMessage()}): check that TLS_CA signed its"
            " certificate and that the certificate names this host"
        )
    if not client_tls:
        return (
            "the server closed the connection before its HELLO: if it uses TLS, set TLS_CA"
            " (or ACHILLES_TLS=1) here; otherwise it may be overloaded, or not an achilles_like server"
        )
    return "the server closed the connection during the handshake"
