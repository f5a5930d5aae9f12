"""achilles_like: a distributed ``multiprocessing.Pool`` on Twisted.

Change one import and ``map`` runs on every machine of a cluster::

    from achilles_like import map
    squares = map(square, range(1000))

With nothing configured, an embedded local cluster is started on 127.0.0.1.

Three roles, each a package over the pure core (``protocol/``, ``scheduling/``):
``server/`` (Twisted glue, the dashboard), ``node/`` (the agent, its watched
worker processes, the code that runs inside a worker) and ``client/`` (which
cluster a call reaches, the session and job driver, sources and sinks, and
the ``map``/``Pool``/``Executor`` facades). ``docs/architecture.md`` draws
every process and thread of all three in one picture.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

# The library's exit hook is registered now, at import (see at_exit.py); the
# rest is imported on first use, so a server or node process (``python -m
# achilles_like server``) loads neither the client nor what only it needs.
from achilles_like import at_exit as _at_exit  # noqa: F401

if TYPE_CHECKING:
    from achilles_like.client.api import getClusterStatus, imap, imap_unordered, killCluster, map
    from achilles_like.client.executor import ProcessPoolExecutor
    from achilles_like.client.executor import ProcessPoolExecutor as Executor
    from achilles_like.client.pool import Pool
    from achilles_like.config import Settings, genConfig, load_settings
    from achilles_like.errors import (
        AchillesError,
        AuthenticationError,
        ClusterConnectionError,
        ConfigurationError,
        JobFailedError,
        ProtocolError,
        TaskTimeoutError,
    )
    from achilles_like.local import LocalCluster
    from achilles_like.node.agent import runAchillesNode
    from achilles_like.server.cluster import runAchillesServer

_WHERE = {
    "getClusterStatus": "client.api",
    "imap": "client.api",
    "imap_unordered": "client.api",
    "killCluster": "client.api",
    "map": "client.api",
    "ProcessPoolExecutor": "client.executor",
    "Executor": "client.executor",
    "Pool": "client.pool",
    "Settings": "config",
    "genConfig": "config",
    "load_settings": "config",
    "AchillesError": "errors",
    "AuthenticationError": "errors",
    "ClusterConnectionError": "errors",
    "ConfigurationError": "errors",
    "JobFailedError": "errors",
    "ProtocolError": "errors",
    "TaskTimeoutError": "errors",
    "LocalCluster": "local",
    "runAchillesNode": "node.agent",
    "runAchillesServer": "server.cluster",
}


def __getattr__(name: str) -> Any:
    """The public names, imported from their modules on first use (PEP 562)."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'achilles_like' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f"achilles_like.{where}")
    value = getattr(module, "ProcessPoolExecutor" if name == "Executor" else name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "AchillesError",
    "AuthenticationError",
    "ClusterConnectionError",
    "ConfigurationError",
    "Executor",
    "JobFailedError",
    "LocalCluster",
    "Pool",
    "ProcessPoolExecutor",
    "ProtocolError",
    "Settings",
    "TaskTimeoutError",
    "__version__",
    "genConfig",
    "getClusterStatus",
    "imap",
    "imap_unordered",
    "killCluster",
    "load_settings",
    "map",
    "runAchillesNode",
    "runAchillesServer",
]
