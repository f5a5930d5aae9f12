"""The server role: Twisted glue that authenticates peers and routes blobs by the pure scheduler."""

from __future__ import annotations

from achilles_like.server.cluster import runAchillesServer, start_server

__all__ = ["runAchillesServer", "start_server"]
