"""The controller's settings, read again only when something they come from has changed.

``load_settings`` reads ``.env`` and the user's secret file at every call,
about 0.15 ms, which a one-item ``map`` paid each time. The result depends on
the call's arguments, the working directory, the environment and those
files, so that is the key: the ``ACHILLES_*`` variables, ``HOME`` and
``XDG_CONFIG_HOME`` (where the secret file is), and each file's identity,
size, modification time, mode and owner (``os.stat``; the secret file is
refused when others may read it). Editing ``.env``, replacing the secret or
exporting a variable is seen by the next call. A ``.env`` that names its own
``SECRET_KEY_FILE`` is never cached: that file is not known without parsing.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from pathlib import Path

from achilles_like.config import ENV_PREFIX, Settings, load_settings
from achilles_like.secret_store import secret_path

_SIZE = 32
_lock = threading.Lock()
_cache: OrderedDict[tuple[object, ...], Settings] = OrderedDict()

Stamp = tuple[int, int, int, int, int] | None


def _stamp(path: str | os.PathLike[str]) -> Stamp:
    """What identifies a file's version, or None when there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_mode, info.st_uid)


def _env_file() -> str:
    """The ``.env`` that ``load_settings`` would read (as ``config`` finds it)."""
    return os.environ.get(ENV_PREFIX + "ENV_FILE") or os.path.join(os.getcwd(), ".env")


_PREFIXES = (ENV_PREFIX, "HOME", "XDG_CONFIG_HOME")


def _variables() -> tuple[tuple[object, object], ...]:
    """The environment variables settings may depend on (a superset: every ``ACHILLES_*``)."""
    environ = os.environ  # names first, values only for the few that match: a third of items()'s cost
    return tuple(sorted((name, environ[name]) for name in environ if name.startswith(_PREFIXES)))


@functools.lru_cache(maxsize=8)
def _secret_file(xdg_config_home: str | None, home: str | None) -> str:
    """``secret_path()`` for these two variables (pathlib's work, done once per pair)."""
    env = {name: value for name, value in (("XDG_CONFIG_HOME", xdg_config_home), ("HOME", home)) if value}
    return str(secret_path(env))


def _key(
    host: str | None, port: int | None, username: str | None, secret_key: str | None
) -> tuple[object, ...]:
    environ = os.environ
    variables = _variables()
    secret_file = _secret_file(environ.get("XDG_CONFIG_HOME"), environ.get("HOME"))
    files: list[Stamp] = [_stamp(_env_file()), _stamp(secret_file)]
    named_file = environ.get(ENV_PREFIX + "SECRET_KEY_FILE")
    if named_file:
        files.append(_stamp(Path(named_file).expanduser()))
    return (host, port, username, secret_key, os.getcwd(), variables, tuple(files))


def _names_a_secret_file(env_file: str) -> bool:
    try:
        return b"SECRET_KEY_FILE" in Path(env_file).read_bytes()
    except OSError:
        return False


def cached_settings(
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
) -> Settings:
    """``load_settings(host, port, username, secret_key)``, from the cache while nothing it reads changed."""
    key = _key(host, port, username, secret_key)
    with _lock:
        settings = _cache.get(key)
        if settings is not None:
            _cache.move_to_end(key)
            return settings
    settings = load_settings(host, port, username, secret_key)
    if not _names_a_secret_file(_env_file()):
        with _lock:
            _cache[key] = settings
            while len(_cache) > _SIZE:
                _cache.popitem(last=False)
    return settings
