"""The controller's settings, read again only when something they come from has changed.

``load_settings`` reads ``.env`` and the user's secret file at every call,
about 0.15 ms, which a one-item ``map`` paid each time. The result depends on
the call's arguments, the working directory, the environment and those
files, so that is the key: the ``ACHILLES_*`` variables ``load_settings``
reads (``config.SETTING_KEYS`` and ``ENV_FILE_KEYS``), ``HOME`` and
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

from achilles_like.config import ENV_FILE_KEYS, ENV_PREFIX, SETTING_KEYS, Settings, load_settings
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


#: The environment variables settings depend on.
WATCHED = (*(ENV_PREFIX + key for key in SETTING_KEYS + ENV_FILE_KEYS), "HOME", "XDG_CONFIG_HOME")
_WATCHED_BYTES = tuple(os.fsencode(name) for name in WATCHED)


def _variables() -> dict[str, str | None]:
    """The values of the :data:`WATCHED` variables, by name (None where unset)."""
    # os.environ.get costs a caught KeyError per unset name (about 1.3 us each, and most
    # are unset); where the environment's own dict is at hand, it is read instead.
    data = getattr(os.environ, "_data", None)
    if type(data) is dict and os.name == "posix":
        values = [None if raw is None else os.fsdecode(raw) for raw in map(data.get, _WATCHED_BYTES)]
        return dict(zip(WATCHED, values, strict=True))
    return {name: os.environ.get(name) for name in WATCHED}


def _env_file(variables: dict[str, str | None], cwd: str) -> str:
    """The ``.env`` that ``load_settings`` would read (as ``config`` finds it)."""
    return variables[ENV_PREFIX + "ENV_FILE"] or os.path.join(cwd, ".env")


@functools.lru_cache(maxsize=8)
def _secret_file(xdg_config_home: str | None, home: str | None) -> str:
    """``secret_path()`` for these two variables (pathlib's work, done once per pair)."""
    env = {name: value for name, value in (("XDG_CONFIG_HOME", xdg_config_home), ("HOME", home)) if value}
    return str(secret_path(env))


def _key(
    host: str | None, port: int | None, username: str | None, secret_key: str | None
) -> tuple[object, ...]:
    variables = _variables()
    cwd = os.getcwd()
    secret_file = _secret_file(variables["XDG_CONFIG_HOME"], variables["HOME"])
    files: list[Stamp] = [_stamp(_env_file(variables, cwd)), _stamp(secret_file)]
    named_file = variables[ENV_PREFIX + "SECRET_KEY_FILE"]
    if named_file:
        files.append(_stamp(Path(named_file).expanduser()))
    return (host, port, username, secret_key, cwd, tuple(variables.values()), tuple(files))


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
    if not _names_a_secret_file(_env_file(_variables(), os.getcwd())):
        with _lock:
            _cache[key] = settings
            while len(_cache) > _SIZE:
                _cache.popitem(last=False)
    return settings
