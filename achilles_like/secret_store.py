"""The per-user secret file, and writing secret files safely.

With no secret configured anywhere, a server makes a strong one and keeps it
in ``$XDG_CONFIG_HOME/achilles_like/secret`` (``~/.config/achilles_like/secret``
when ``XDG_CONFIG_HOME`` is unset); nodes, controllers and admin commands of
the same user with no secret configured read it from there. So even a
cluster on 127.0.0.1 never accepts a peer that has not proved a secret: on a
shared machine, other users reach 127.0.0.1 too, but they cannot read a
file of mode 0600 in our home.

Every secret file is written the same way (:func:`write_private`): a new
file created with ``O_EXCL`` and mode 0600 in the target directory, then
renamed over the target. A symlink at the target is replaced, never
followed, and no reader ever sees a half-written or world-readable file.
The shared secret file is created with a hard link instead of a rename, so
two servers starting at once agree on one secret instead of the second
silently replacing the first.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from achilles_like.errors import ConfigurationError

APP_DIR = "achilles_like"
SECRET_FILE = "secret"


def secret_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where this user's secret file lives (XDG base directory rules)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if Path(base).is_absolute() else Path(env.get("HOME") or Path.home()) / ".config"
    return root / APP_DIR / SECRET_FILE


def _temporary_beside(target: Path, text: str) -> Path:
    """A new 0600 file in ``target``'s directory holding ``text`` (O_EXCL: never an existing file)."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)  # mkstemp already uses 0600; say so whatever the platform
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return Path(name)


def write_private(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` with a new 0600 file holding ``text`` (a symlink there is replaced, not followed)."""
    target = Path(path).expanduser()
    # Resolve the directory only: resolving the file itself would follow a symlink planted there.
    target = target.parent.resolve() / target.name
    temporary = _temporary_beside(target, text)
    try:
        os.replace(temporary, target)  # rename(2) replaces a symlink itself
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return target


def read_secret_file(path: str | os.PathLike[str]) -> str:
    """The secret in ``path`` (first line, stripped); refuse a file other users can read or write."""
    target = Path(path).expanduser()
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise ConfigurationError(
            f"cannot read the secret file {str(target)!r}: {error.strerror}"
            " (it must be a regular file, not a symlink; `achilles genconfig` writes a good one)"
        ) from None
    with os.fdopen(fd, encoding="utf-8") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(f"the secret file {str(target)!r} is not a regular file")
        if info.st_mode & 0o077 or info.st_uid != os.getuid():
            raise ConfigurationError(
                f"the secret file {str(target)!r} is readable or writable by other users"
                f" (mode {stat.S_IMODE(info.st_mode):03o}) or not yours; run `chmod 600 {target}`"
            )
        secret = handle.readline().strip()
    if not secret:
        raise ConfigurationError(f"the secret file {str(target)!r} is empty")
    return secret


def stored_secret(environ: Mapping[str, str] | None = None) -> str:
    """This user's stored secret, or ``""`` when there is none yet."""
    path = secret_path(environ)
    if not path.exists() and not path.is_symlink():
        return ""
    return read_secret_file(path)


def ensure_secret(new_secret: str, environ: Mapping[str, str] | None = None) -> tuple[str, Path, bool]:
    """This user's stored secret, storing ``new_secret`` first if there is none.

    Returns the secret, the file's path and whether this call created it.
    """
    path = secret_path(environ)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = _temporary_beside(path, new_secret + "\n")
    try:
        os.link(temporary, path)  # fails if the file exists: the first server's secret wins
        created = True
    except FileExistsError:
        created = False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    return read_secret_file(path), path, created
