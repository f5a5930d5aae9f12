"""Settings: explicit arguments, then environment, then ``.env``, then defaults.

The ``.env`` keys are achilles' own (``HOST``, ``PORT``, ``USERNAME``,
``SECRET_KEY``), plus ``PROCESSES``, ``MAX_BODY``, the TLS keys (``TLS``,
``TLS_CERT``, ``TLS_KEY``, ``TLS_CA``; see ``tls.py``) and the dashboard's
(``DASHBOARD_PORT``, ``DASHBOARD_HOST``, ``DASHBOARD_TOKEN``). Environment variables carry an
``ACHILLES_`` prefix (``ACHILLES_HOST``...) because ``HOST`` and ``USERNAME``
are already set by many shells and by Windows. ``.env`` is read with
python-dotenv without touching ``os.environ``, from the current directory
unless a path is given (``ACHILLES_ENV_FILE`` also names one).

:func:`genConfig` writes a ``.env`` with mode 0600 where the user asks, never
into the installed package. The secret is masked in every ``repr``. With no
``SECRET_KEY`` (nor ``SECRET_KEY_FILE``) configured, the user's stored secret
is used (``secret_store.py``): that is how a server, its nodes and its
controllers of one user agree on a secret with nothing configured.
"""

from __future__ import annotations

import getpass
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from dotenv import dotenv_values

from achilles_like.errors import ConfigurationError
from achilles_like.protocol.frames import DEFAULT_MAX_BODY
from achilles_like.secret_store import read_secret_file, stored_secret, write_private

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9999
ENV_PREFIX = "ACHILLES_"
#: Every setting ``load_settings`` looks up (as ``ACHILLES_<KEY>``, then ``<KEY>`` in ``.env``).
SETTING_KEYS = (
    "HOST",
    "PORT",
    "USERNAME",
    "SECRET_KEY",
    "SECRET_KEY_FILE",
    "PROCESSES",
    "MAX_BODY",
    "TLS",
    "TLS_CERT",
    "TLS_KEY",
    "TLS_CA",
    "DASHBOARD_PORT",
    "DASHBOARD_HOST",
    "DASHBOARD_TOKEN",
)
#: The variables that choose which ``.env`` is read (``ACHILLES_`` + these).
ENV_FILE_KEYS = ("NO_DOTENV", "ENV_FILE")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class Settings:
    """Everything a server, node or controller needs to find and trust its peers."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    username: str = ""
    secret_key: str = field(default="", repr=False)
    processes: int | None = None
    max_body: int = DEFAULT_MAX_BODY
    tls: bool = False  # TLS on a node/controller with the system's roots (TLS_CA implies it)
    tls_cert: str = ""  # PEM certificate (chain): the server's, or a client's own
    tls_key: str = ""  # its private key
    tls_ca: str = ""  # the CA to trust for the other side's certificate
    # Whether a host or port was configured anywhere (argument, environment,
    # .env): with neither, the client starts an embedded local cluster.
    host_configured: bool = False
    # The server's web dashboard, /api/status and /metrics (None: off; 0: any free port).
    dashboard_port: int | None = None
    dashboard_host: str = DEFAULT_HOST
    dashboard_token: str = field(default="", repr=False)  # required on every request if set

    def __repr__(self) -> str:
        masked = "'***'" if self.secret_key else "''"
        return (
            f"Settings(host={self.host!r}, port={self.port}, username={self.username!r},"
            f" secret_key={masked}, processes={self.processes}, max_body={self.max_body},"
            f" tls_cert={self.tls_cert!r}, tls_ca={self.tls_ca!r})"
        )

    @property
    def client_tls(self) -> bool:
        """Whether a node or controller connects with TLS."""
        return self.tls or bool(self.tls_ca)

    @property
    def secret_bytes(self) -> bytes:
        """The secret as the bytes the handshake keys its HMAC with."""
        return self.secret_key.encode("utf-8")

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the given (non-None) fields replaced."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]


def _env_file_values(env_file: str | os.PathLike[str] | None) -> Mapping[str, str | None]:
    if env_file is None and os.environ.get(ENV_PREFIX + "NO_DOTENV"):
        return {}  # a private LocalCluster child: the caller's .env must not apply
    path = env_file or os.environ.get(ENV_PREFIX + "ENV_FILE") or Path.cwd() / ".env"
    if not Path(path).is_file():
        if env_file is not None:
            raise ConfigurationError(f"the .env file {str(path)!r} does not exist")
        return {}
    return dotenv_values(path)


def _positive_int(name: str, raw: object) -> int:
    try:
        value = int(str(raw))
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, not {raw!r}") from None
    if value <= 0 or (name.endswith("PORT") and value > 65535):
        raise ConfigurationError(f"{name} is out of range: {value}")
    return value


def load_settings(
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
    *,
    secret_key_file: str | None = None,
    processes: int | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_ca: str | None = None,
    env_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    dashboard_port: int | None = None,
    dashboard_host: str | None = None,
    dashboard_token: str | None = None,
) -> Settings:
    """Resolve settings: explicit arguments > ``ACHILLES_*`` variables > ``.env`` > defaults.

    The secret is ``SECRET_KEY``, else the contents of ``SECRET_KEY_FILE``, else
    this user's stored secret (``secret_store.secret_path``, found through the
    process's own environment: it belongs to the user, not to ``environ``), else empty.
    """
    env = os.environ if environ is None else environ
    dotenv = _env_file_values(env_file)
    explicit = {"HOST": host, "PORT": port, "USERNAME": username, "SECRET_KEY": secret_key}
    explicit.update(PROCESSES=processes, SECRET_KEY_FILE=secret_key_file)
    explicit.update(TLS_CERT=tls_cert, TLS_KEY=tls_key, TLS_CA=tls_ca)
    explicit.update(DASHBOARD_PORT=dashboard_port, DASHBOARD_HOST=dashboard_host)
    explicit.update(DASHBOARD_TOKEN=dashboard_token)

    def lookup(key: str) -> object | None:
        assert key in SETTING_KEYS, key  # the controller's settings cache watches only those
        for value in (explicit.get(key), env.get(ENV_PREFIX + key), dotenv.get(key)):
            if value is not None and value != "":
                return value
        return None

    raw_port, raw_processes, raw_body = lookup("PORT"), lookup("PROCESSES"), lookup("MAX_BODY")
    raw_host = lookup("HOST")
    raw_dashboard = lookup("DASHBOARD_PORT")
    secret = str(lookup("SECRET_KEY") or "")
    if not secret:
        secret_file = lookup("SECRET_KEY_FILE")
        secret = read_secret_file(str(secret_file)) if secret_file else stored_secret()
    return Settings(
        host=str(raw_host) if raw_host is not None else DEFAULT_HOST,
        # Port 0 is legal as an explicit argument: "any free port" for a server.
        port=DEFAULT_PORT if raw_port is None else (0 if port == 0 else _positive_int("PORT", raw_port)),
        username=str(lookup("USERNAME") or ""),
        secret_key=secret,
        processes=None if raw_processes is None else _positive_int("PROCESSES", raw_processes),
        max_body=DEFAULT_MAX_BODY if raw_body is None else _positive_int("MAX_BODY", raw_body),
        tls=str(lookup("TLS") or "").lower() in ("1", "true", "yes", "on"),
        tls_cert=str(lookup("TLS_CERT") or ""),
        tls_key=str(lookup("TLS_KEY") or ""),
        tls_ca=str(lookup("TLS_CA") or ""),
        host_configured=raw_host is not None or raw_port is not None,
        dashboard_port=None if raw_dashboard is None else _port_or_zero("DASHBOARD_PORT", raw_dashboard),
        dashboard_host=str(lookup("DASHBOARD_HOST") or DEFAULT_HOST),
        dashboard_token=str(lookup("DASHBOARD_TOKEN") or ""),
    )


def _port_or_zero(name: str, raw: object) -> int:
    """A port number where 0 means "any free port"."""
    return 0 if str(raw).strip() == "0" else _positive_int(name, raw)


def usable_cpus() -> int:
    """The CPUs this process may run on: honours SLURM, cgroups and ``taskset``, unlike ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


def generate_secret() -> str:
    """A strong random secret (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def _ask(prompt: str, default: str) -> str:
    answer = input(f"{prompt} [{default}]: ").strip()
    return answer or default


def genConfig(  # noqa: N802 - achilles' public name
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
    path: str | os.PathLike[str] = ".env",
    *,
    interactive: bool | None = None,
) -> Path:
    """Write a ``.env`` (mode 0600) at ``path`` and return its path.

    Missing values are asked for when a terminal is attached; otherwise the
    defaults are used and a strong secret is generated. An existing file is
    replaced, as in achilles (atomically, see ``secret_store.write_private``).
    """
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    if interactive:
        host = host or _ask("HOST (address the server listens on)", DEFAULT_HOST)
        port = port or int(_ask("PORT", str(DEFAULT_PORT)))
        username = username if username is not None else _ask("USERNAME", getpass.getuser())
        if secret_key is None:
            secret_key = getpass.getpass("SECRET_KEY (empty: generate a strong one): ") or None
    values = {
        "HOST": host or DEFAULT_HOST,
        "PORT": str(_positive_int("PORT", port or DEFAULT_PORT)),
        "USERNAME": username or "",
        "SECRET_KEY": secret_key or generate_secret(),
    }
    for key, value in values.items():
        if any(c in value for c in "\r\n\"'"):
            raise ConfigurationError(f"{key} may not contain quotes or line breaks")
    text = "".join(f"{key}={value}\n" for key, value in values.items())
    # A new 0600 file renamed into place: never readable by others, never half
    # written, and a symlink planted at the path is replaced instead of followed.
    return write_private(path, text)
