"""What the controller keeps between calls: settings until their sources change, functions sent by name."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tasks

from achilles_like.client.calls import ReferenceBlobs
from achilles_like.client.settings_cache import cached_settings
from achilles_like.serialization import loads


@pytest.fixture
def in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory, with no .env switch or host set in the environment."""
    for name in ("ACHILLES_NO_DOTENV", "ACHILLES_ENV_FILE", "ACHILLES_HOST", "ACHILLES_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_settings_are_reused_while_nothing_changes(in_empty_dir: Path) -> None:
    """Two calls with the same arguments, environment and files get the very same Settings."""
    (in_empty_dir / ".env").write_text("HOST=10.0.0.1\nPORT=1111\n", encoding="utf-8")
    first = cached_settings(secret_key="s")
    assert (first.host, first.port) == ("10.0.0.1", 1111)
    assert cached_settings(secret_key="s") is first


def test_an_edited_env_file_is_seen_by_the_next_call(in_empty_dir: Path) -> None:
    """Changing .env (here within the same second, to a value of the same length) is seen at once."""
    env_file = in_empty_dir / ".env"
    env_file.write_text("HOST=10.0.0.1\nPORT=1111\n", encoding="utf-8")
    assert cached_settings(secret_key="s").port == 1111
    stat = env_file.stat()
    env_file.write_text("HOST=10.0.0.1\nPORT=2222\n", encoding="utf-8")
    os.utime(env_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # a coarse clock must not hide it
    assert cached_settings(secret_key="s").port == 2222
    env_file.unlink()
    assert not cached_settings(secret_key="s").host_configured


def test_an_exported_variable_is_seen_by_the_next_call(
    in_empty_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ACHILLES_* variable set between two calls changes the second one's settings."""
    assert not cached_settings(secret_key="s").host_configured
    monkeypatch.setenv("ACHILLES_HOST", "10.0.0.2")
    assert cached_settings(secret_key="s").host == "10.0.0.2"


def _make_closure(value: int) -> Callable[[int], int]:
    def add(x: int) -> int:
        return x + value

    return add


def test_a_function_sent_by_name_is_pickled_once() -> None:
    """An importable module-level function's blob (just its name) is made once and reused."""
    blobs = ReferenceBlobs()
    first = blobs.blob(tasks.square, None)
    assert blobs.blob(tasks.square, None) is first
    assert blobs.blob(tasks.square, tasks.negate) is not first  # another callback, another blob
    func, _, _ = loads(first)
    assert func is tasks.square


def test_a_function_sent_by_value_is_reused_until_what_it_is_made_of_changes() -> None:
    """A by-value closure keeps its blob until its cell is refilled; then the change travels."""
    blobs = ReferenceBlobs()
    add = _make_closure(1)
    first = blobs.blob(add, None)
    assert blobs.blob(add, None) is first
    add.__closure__[0].cell_contents = 5  # type: ignore[index]
    second = blobs.blob(add, None)
    func: Any = loads(second)[0]
    assert func(1) == 6 and loads(first)[0](1) == 2


def test_a_function_naming_something_mutable_is_pickled_afresh_each_time() -> None:
    """A by-value function over a list is pickled at every call, so an append in between travels."""
    blobs = ReferenceBlobs()
    found = [1]
    count = _make_counter(found)
    first = blobs.blob(count, None)
    found.append(2)
    second = blobs.blob(count, None)
    assert second is not first
    assert loads(first)[0]() == 1 and loads(second)[0]() == 2


def _make_counter(values: list[int]) -> Callable[[], int]:
    def count() -> int:
        return len(values)

    return count


class _RecordingEnviron(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(name)
        return super().get(name, default)

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return super().__getitem__(name)

    def __contains__(self, name: object) -> bool:
        self.read.add(str(name))
        return super().__contains__(name)


def test_the_cache_watches_every_variable_settings_are_read_from(
    in_empty_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each variable load_settings reads, through any path (.env choice, secret file), is in the key."""
    from achilles_like import config
    from achilles_like.client import settings_cache

    recording = _RecordingEnviron(dict(os.environ))
    monkeypatch.setattr(os, "environ", recording)
    config.load_settings()
    monkeypatch.delitem(recording, "XDG_CONFIG_HOME")
    monkeypatch.setitem(recording, "HOME", str(in_empty_dir))
    config.load_settings()  # the secret file is found through HOME this time
    monkeypatch.setitem(recording, "ACHILLES_SECRET_KEY_FILE", str(in_empty_dir / "nothing"))
    with pytest.raises(config.ConfigurationError):
        config.load_settings()  # the named file is missing: read through a second path
    assert recording.read, "load_settings read no variable: the recording environment was bypassed"
    assert recording.read <= set(settings_cache.WATCHED), recording.read - set(settings_cache.WATCHED)


def test_every_watched_variable_changes_the_cached_settings(
    in_empty_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setting any watched variable (here ACHILLES_DASHBOARD_TOKEN and ACHILLES_TLS) is seen at once."""
    first = cached_settings(secret_key="s")
    monkeypatch.setenv("ACHILLES_DASHBOARD_TOKEN", "t0ken")
    second = cached_settings(secret_key="s")
    assert second.dashboard_token == "t0ken" and first.dashboard_token == ""
    monkeypatch.setenv("ACHILLES_TLS", "1")
    assert cached_settings(secret_key="s").tls
