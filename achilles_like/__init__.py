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

from achilles_like.client.api import getClusterStatus, imap, imap_unordered, killCluster, map
from achilles_like.client.executor import ProcessPoolExecutor
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

#: ``concurrent.futures`` users write ``Executor``; it is the same class.
Executor = ProcessPoolExecutor

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
