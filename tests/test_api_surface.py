"""The public API: the exact ``__all__`` and the original achilles signatures."""

from __future__ import annotations

import builtins
import inspect
import io
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from conftest import status_of, target

import achilles_like
from achilles_like import LocalCluster, killCluster

EMPTY = inspect.Parameter.empty
POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD

EXPECTED_ALL = [
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


def params(func: Callable[..., Any]) -> list[tuple[str, object]]:
    """The (name, default) pairs of the positional-or-keyword parameters of ``func``."""
    return [(p.name, p.default) for p in inspect.signature(func).parameters.values() if p.kind == POSITIONAL]


def extra_params(func: Callable[..., Any]) -> list[tuple[str, inspect._ParameterKind]]:
    """The parameters of ``func`` that are not positional-or-keyword (added beyond achilles)."""
    return [(p.name, p.kind) for p in inspect.signature(func).parameters.values() if p.kind != POSITIONAL]


def test_all_is_exactly_the_expected_sorted_list() -> None:
    """__all__ lists exactly the public names, sorted."""
    assert achilles_like.__all__ == EXPECTED_ALL
    assert sorted(achilles_like.__all__) == achilles_like.__all__


def test_every_name_in_all_resolves() -> None:
    """Every name in __all__ is an attribute of the package, and star-import yields exactly those names."""
    for name in achilles_like.__all__:
        assert getattr(achilles_like, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from achilles_like import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == EXPECTED_ALL


def test_version_is_a_string() -> None:
    """__version__ is a dotted version string."""
    assert isinstance(achilles_like.__version__, str)
    assert all(part.isdigit() for part in achilles_like.__version__.split("."))


def test_error_classes_share_one_root() -> None:
    """Every exported error class derives from AchillesError."""
    for name in (
        "AuthenticationError",
        "ClusterConnectionError",
        "ConfigurationError",
        "JobFailedError",
        "ProtocolError",
        "TaskTimeoutError",
    ):
        assert issubclass(getattr(achilles_like, name), achilles_like.AchillesError), name


@pytest.mark.parametrize("name", ["map", "imap", "imap_unordered"])
def test_map_family_keeps_the_achilles_signature(name: str) -> None:
    """The map family takes achilles' (func, args, callback=None, chunksize=1, host, port, username,
    secret_key) positionally, plus a keyword-only per-task ``timeout`` and ``progress`` bar."""
    func = getattr(achilles_like, name)
    assert inspect.signature(func).parameters["timeout"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params(func) == [
        ("func", EMPTY),
        ("args", EMPTY),
        ("callback", None),
        ("chunksize", 1),
        ("host", None),
        ("port", None),
        ("username", None),
        ("secret_key", None),
    ]
    keyword_only = inspect.Parameter.KEYWORD_ONLY
    assert extra_params(func) == [("timeout", keyword_only), ("progress", keyword_only)]


def test_run_achilles_server_signature() -> None:
    """runAchillesServer takes (host, port, username, secret_key) (optional) and keyword dashboard_port."""
    assert params(achilles_like.runAchillesServer) == [
        ("host", None),
        ("port", None),
        ("username", None),
        ("secret_key", None),
    ]
    assert extra_params(achilles_like.runAchillesServer) == [
        ("dashboard_port", inspect.Parameter.KEYWORD_ONLY)
    ]


def test_run_achilles_node_signature() -> None:
    """runAchillesNode takes (host, port, secret_key, processes), all optional."""
    assert params(achilles_like.runAchillesNode) == [
        ("host", None),
        ("port", None),
        ("secret_key", None),
        ("processes", None),
    ]
    assert extra_params(achilles_like.runAchillesNode) == []


def test_kill_cluster_signature() -> None:
    """killCluster takes (command_verified=False, host, port, username, secret_key), then keyword-only."""
    assert params(killCluster) == [
        ("command_verified", False),
        ("host", None),
        ("port", None),
        ("username", None),
        ("secret_key", None),
    ]
    assert extra_params(killCluster) == [("stop_server", inspect.Parameter.KEYWORD_ONLY)]


def test_gen_config_signature() -> None:
    """genConfig takes (host, port, username, secret_key, path='.env'); extras are keyword-only."""
    assert params(achilles_like.genConfig) == [
        ("host", None),
        ("port", None),
        ("username", None),
        ("secret_key", None),
        ("path", ".env"),
    ]
    assert extra_params(achilles_like.genConfig) == [("interactive", inspect.Parameter.KEYWORD_ONLY)]


def test_get_cluster_status_signature() -> None:
    """getClusterStatus takes (host, port, username, secret_key), all optional."""
    assert params(achilles_like.getClusterStatus) == [
        ("host", None),
        ("port", None),
        ("username", None),
        ("secret_key", None),
    ]
    assert extra_params(achilles_like.getClusterStatus) == []


def _no_input(prompt: str = "") -> str:
    raise AssertionError(f"killCluster prompted without a terminal: {prompt!r}")


@pytest.mark.parametrize("stdin", [io.StringIO("y\n"), None], ids=["pipe", "none"])
def test_kill_cluster_without_terminal_raises_instead_of_blocking(
    stdin: io.StringIO | None, cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """killCluster() without command_verified and with no terminal raises RuntimeError and stops nothing."""
    monkeypatch.setattr("sys.stdin", stdin)
    monkeypatch.setattr(builtins, "input", _no_input)
    with pytest.raises(RuntimeError, match=r"command_verified=True"):
        killCluster(**target(cluster))
    assert len(status_of(cluster)["nodes"]) == 2


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("answer", ["n", "", "no", "maybe"])
def test_kill_cluster_declined_on_terminal_stops_nothing(
    answer: str, cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal, any answer but y/yes returns 0 and leaves every node running."""
    prompts: list[str] = []

    def fake_input(prompt: str = "") -> str:
        prompts.append(prompt)
        return answer

    monkeypatch.setattr("sys.stdin", _FakeTerminal())
    monkeypatch.setattr(builtins, "input", fake_input)
    assert killCluster(**target(cluster)) == 0
    assert prompts == [f"Stop every node of the cluster at {cluster.host}:{cluster.port}? [y/N] "]
    assert len(status_of(cluster)["nodes"]) == 2


def test_importing_the_package_loads_only_its_exit_hook() -> None:
    """A server or node process (``python -m achilles_like server``) loads no client; names load on use."""
    code = (
        "import sys, achilles_like\n"
        "print('achilles_like.at_exit' in sys.modules, 'achilles_like.client.api' in sys.modules,"
        " 'twisted' in sys.modules)\n"
        "achilles_like.map\n"
        "print('achilles_like.client.api' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["True", "False", "False", "True"]
