"""The one place that decides which cluster a call reaches.

In order: explicit ``host`` (with ``port``, ``username``, ``secret_key``)
arguments; else the innermost ``with LocalCluster()`` block; else
``ACHILLES_HOST`` or ``HOST`` in the environment or ``.env``; else a local
cluster: the embedded default one, started on first use and reused, for the
module functions; a private one of the pool's size for a ``Pool`` or an
executor (as ``multiprocessing.Pool(n)`` starts ``n`` workers of its own).
Admin calls (status, kill) never start a cluster just to query it.
"""

from __future__ import annotations

from achilles_like.client.settings_cache import cached_settings
from achilles_like.config import Settings, load_settings, usable_cpus
from achilles_like.local import LocalCluster, active_cluster, default_cluster, running_default_cluster


def _configured(
    host: str | None, port: int | None, username: str | None, secret_key: str | None
) -> Settings | None:
    """Settings from the arguments, an active LocalCluster or the configuration; None if none applies."""
    cluster = active_cluster()
    if host is None and cluster is not None:
        return cluster.settings.with_overrides(username=username, secret_key=secret_key)
    settings = cached_settings(host, port, username, secret_key)  # .env is read only when it changed
    return settings if settings.host_configured else None


def resolve_settings(
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
) -> Settings:
    """Settings for a module function: the configured cluster, else the embedded default one."""
    return _configured(host, port, username, secret_key) or default_cluster().settings


def admin_settings(
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
) -> Settings:
    """Settings for an admin call: like :func:`resolve_settings`, but never starts a cluster.

    Unconfigured, it is the running default cluster if any, else 127.0.0.1:9999.
    """
    cluster = running_default_cluster()
    if host is None and port is None and active_cluster() is None and cluster is not None:
        return cluster.settings.with_overrides(username=username, secret_key=secret_key)
    return _configured(host, port, username, secret_key) or load_settings(host, port, username, secret_key)


def pool_cluster(
    processes: int | None, host: str | None, port: int | None, username: str | None, secret_key: str | None
) -> tuple[Settings, LocalCluster | None]:
    """Settings for a Pool or an executor, and the private cluster started for it if none is configured."""
    settings = _configured(host, port, username, secret_key)
    if settings is not None:
        return settings, None
    cluster = LocalCluster(nodes=1, processes=processes or usable_cpus()).start()
    return cluster.settings, cluster
