"""TLS for every connection, through Twisted's TLS support (pyOpenSSL).

Settings (``.env`` key / ``ACHILLES_`` variable / console flag):

- ``TLS_CERT`` + ``TLS_KEY`` (``--tls-cert``/``--tls-key``): on the server, its
  certificate chain and key, which turn TLS on for its listening port; on a
  node or controller, an optional client certificate to present.
- ``TLS_CA`` (``--tls-ca``): the CA that signed the other side's certificate.
  On a node or controller it turns TLS on and is the only root trusted for
  the server; on the server it makes client certificates mandatory (mutual
  TLS) and verifies them against it.
- ``TLS=1``: TLS on a node or controller with the system's trusted roots
  (for a server certificate from a public CA).

Verification is always on: the server's certificate must chain to the
trusted root *and* name the host we dialled (DNS name or IP address). There
is no setting to turn that off; a test cluster uses a private CA instead
(README: "TLS with a private CA").
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from achilles_like.config import Settings
from achilles_like.errors import ConfigurationError


def skip_tls_stack() -> None:
    """In a server or node process with TLS off: keep Twisted from loading pyOpenSSL and ``cryptography``.

    Twisted's reactor imports its TLS support whenever pyOpenSSL is
    installed, and that was about a quarter of a server's or node's imports
    (``LocalCluster`` starts three such processes at once on two cores). A
    ``None`` in ``sys.modules`` makes ``import OpenSSL`` fail as if it were not
    installed, and Twisted goes on without TLS, which this process does not
    use. Call it before anything imports Twisted's reactor; worker processes,
    forked from the node, undo it (:func:`allow_tls_stack`) before any task.
    """
    sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]


def allow_tls_stack() -> None:
    """Undo :func:`skip_tls_stack` (in a forked worker: the user's code may import pyOpenSSL)."""
    if "OpenSSL" in sys.modules and sys.modules["OpenSSL"] is None:
        del sys.modules["OpenSSL"]


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read {what} {path!r}: {error.strerror}") from None


def _private_certificate(settings: Settings) -> Any:
    from twisted.internet import ssl

    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigurationError("TLS_CERT and TLS_KEY go together: set both or neither")
    pem = _read(settings.tls_cert, "TLS_CERT") + b"\n" + _read(settings.tls_key, "TLS_KEY")
    try:
        return ssl.PrivateCertificate.loadPEM(pem)  # type: ignore[no-untyped-call]
    except Exception as error:  # noqa: BLE001 - pyOpenSSL raises several kinds
        raise ConfigurationError(
            f"TLS_CERT/TLS_KEY do not hold a PEM certificate and its key: {error}"
        ) from None


def _authority(settings: Settings) -> Any:
    from twisted.internet import ssl

    try:
        return ssl.Certificate.loadPEM(_read(settings.tls_ca, "TLS_CA"))
    except ConfigurationError:
        raise
    except Exception as error:  # noqa: BLE001 - pyOpenSSL raises several kinds
        raise ConfigurationError(f"TLS_CA does not hold a PEM certificate: {error}") from None


def server_context(settings: Settings) -> Any | None:
    """The server's TLS context factory, or None when TLS is off (no TLS_CERT)."""
    if not settings.tls_cert and not settings.tls_key:
        return None
    certificate = _private_certificate(settings)
    if settings.tls_ca:
        # Mutual TLS: only peers with a certificate from this CA get past TLS.
        return certificate.options(_authority(settings))
    return certificate.options()


def client_creator(settings: Settings) -> Any | None:
    """The client TLS connection creator for ``settings.host``, or None when TLS is off."""
    if not settings.client_tls:
        return None
    from twisted.internet import ssl

    trust = _authority(settings) if settings.tls_ca else ssl.platformTrust()  # type: ignore[no-untyped-call]
    client_certificate = _private_certificate(settings) if settings.tls_cert else None
    return ssl.optionsForClientTLS(settings.host, trustRoot=trust, clientCertificate=client_certificate)
