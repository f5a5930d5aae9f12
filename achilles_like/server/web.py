"""The dashboard's HTTP side: ``/``, ``/api/status`` and ``/metrics`` on the server's reactor.

::

    browser, Prometheus ──HTTP──▶ Site ─▶ _Guard ─▶ /            dashboard.html (static)
                                   (token, Host)    /api/status  ClusterServer.status() as JSON
                                                    /metrics     prometheus_client MetricsResource

The page is one self-contained file (inline CSS and script, no CDN: a cluster
may have no internet) that polls ``/api/status`` every second. Everything is
served by ``twisted.web`` on the reactor that runs the cluster, so the numbers
are read between two events, never half-updated.

Who may look. It binds 127.0.0.1 unless told otherwise. Beyond loopback every
request must carry the dashboard token (``?token=`` on the page's address,
which the page passes on, or ``Authorization: Bearer``), because who runs what
on which machine is worth something to an attacker; a configured token is
required on loopback too. Without a token, only loopback ``Host`` names are
answered, so a web page in the user's browser cannot read the status through
DNS rebinding. Nothing served holds an argument, a result or a secret.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from importlib import resources
from typing import Any

from prometheus_client.twisted import MetricsResource
from twisted.internet.interfaces import IListeningPort
from twisted.web import http, pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from achilles_like.config import LOOPBACK_HOSTS
from achilles_like.server.metrics import ServerStats

log = logging.getLogger("achilles_like.server.web")

# The page may run its own inline script and style and talk to this origin only.
_HEADERS = {
    b"cache-control": b"no-store",
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",  # the token may be in the address
    b"content-security-policy": b"default-src 'none'; script-src 'unsafe-inline';"
    b" style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
}


class _Page(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.html = resources.files("achilles_like.server").joinpath("dashboard.html").read_bytes()

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 - Twisted's name
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self.html


class _Status(Resource):
    isLeaf = True

    def __init__(self, status: Any) -> None:
        super().__init__()
        self.status = status

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 - Twisted's name
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.status()).encode("utf-8")


class _Guard(Resource):
    """Check every request's token (or loopback Host) before handing it to ``inner``."""

    def __init__(self, inner: Resource, token: str) -> None:
        super().__init__()
        self.inner = inner
        self.token = token

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:  # noqa: N802
        for name, value in _HEADERS.items():
            request.setHeader(name, value)
        refusal = self._refusal(request)
        if refusal:
            log.warning("dashboard refused %s: %s", _peer(request), refusal)
            return pages.forbidden("Forbidden", refusal)
        child: IResource = self.inner.getChildWithDefault(path, request)
        return child

    def _refusal(self, request: Request) -> str:
        if self.token:
            given = _given_token(request)
            if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
                return "this dashboard needs its token: open the address the server printed (…?token=…)"
            return ""
        host = (request.getRequestHostname() or b"").decode("ascii", "replace")
        if host.strip("[]") not in LOOPBACK_HOSTS:
            return f"Host {host!r} is not a loopback name; use http://127.0.0.1:<port>/"
        return ""


def _given_token(request: Request) -> str:
    auth = request.getHeader(b"authorization") or b""
    if auth.startswith(b"Bearer "):
        return auth[len(b"Bearer ") :].decode("utf-8", "replace")
    values: list[bytes] = (request.args or {}).get(b"token") or [b""]
    return values[0].decode("utf-8", "replace")


def _peer(request: Request) -> str:
    peer = request.getClientAddress()
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


class _QuietSite(Site):
    """A Site that does not log every poll: one line a second per open page is noise."""

    def log(self, request: http.Request) -> None:
        pass


def dashboard_token(host: str, configured: str) -> str:
    """The token the dashboard requires: the configured one, a new one beyond loopback, else none."""
    if configured:
        return configured
    return "" if host in LOOPBACK_HOSTS else secrets.token_urlsafe(24)


def build_site(status: Any, stats: ServerStats, token: str) -> Site:
    """The dashboard's resource tree behind the token guard."""
    root = Resource()
    root.putChild(b"", _Page())
    api = Resource()
    api.putChild(b"status", _Status(status))
    root.putChild(b"api", api)
    root.putChild(b"metrics", MetricsResource(registry=stats.registry))
    site = _QuietSite(_Guard(root, token))
    site.displayTracebacks = False
    return site


def start_dashboard(
    reactor: Any, status: Any, stats: ServerStats, host: str, port: int, configured_token: str = ""
) -> tuple[IListeningPort, str]:
    """Listen for the dashboard; return the port and the address to open (with its token)."""
    token = dashboard_token(host, configured_token)
    listening: IListeningPort = reactor.listenTCP(port, build_site(status, stats, token), interface=host)
    real = listening.getHost()
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{real.port}/"  # type: ignore[attr-defined]
    return listening, url + (f"?token={token}" if token else "")
