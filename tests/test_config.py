"""Settings resolution, genConfig and the bind check: pure and fast, no processes.

Every ``load_settings`` call passes ``environ=`` explicitly so the engineer's
own shell cannot change the outcome; the ``.env`` file is either passed as
``env_file=`` or placed in a temporary current directory.
"""

from __future__ import annotations

import builtins
import getpass
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import achilles_like
from achilles_like.config import DEFAULT_HOST, DEFAULT_PORT, Settings, genConfig, load_settings
from achilles_like.errors import ConfigurationError
from achilles_like.server.cluster import check_bind_allowed

KEYS = ("HOST", "PORT", "USERNAME", "SECRET_KEY")
# key -> (keyword argument, explicit value, environment value, .env value, expected default)
LAYERS: dict[str, tuple[str, object, str, str, object]] = {
    "HOST": ("host", "10.0.0.1", "10.0.0.2", "10.0.0.3", DEFAULT_HOST),
    "PORT": ("port", 1111, "2222", "3333", DEFAULT_PORT),
    "USERNAME": ("username", "arg-user", "env-user", "file-user", ""),
    "SECRET_KEY": ("secret_key", "arg-secret", "env-secret", "file-secret", ""),
}


def _typed(key: str, raw: object) -> object:
    """The Settings value a raw layer value should become."""
    return int(str(raw)) if key == "PORT" else raw


@pytest.fixture(autouse=True)
def _no_ambient_dotenv_switches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The ``.env`` switches are read from ``os.environ``: make sure the shell sets none of them."""
    monkeypatch.delenv("ACHILLES_NO_DOTENV", raising=False)
    monkeypatch.delenv("ACHILLES_ENV_FILE", raising=False)
    yield


def write_env(path: Path, **values: str) -> Path:
    """Write a ``.env`` file with the given keys and return its path."""
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()), encoding="utf-8")
    return path


# -- precedence ---------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_defaults_apply_when_nothing_is_set(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no argument, no ACHILLES_* variable and no .env, each key takes its default."""
    monkeypatch.chdir(tmp_path)
    attr, _, _, _, default = LAYERS[key]
    settings = load_settings(environ={})
    assert getattr(settings, attr) == default


@pytest.mark.parametrize("key", KEYS)
def test_env_file_beats_defaults(key: str, tmp_path: Path) -> None:
    """A value in the .env file replaces the default."""
    attr, _, _, file_value, _ = LAYERS[key]
    env_file = write_env(tmp_path / "cfg.env", **{key: file_value})
    settings = load_settings(environ={}, env_file=env_file)
    assert getattr(settings, attr) == _typed(key, file_value)


@pytest.mark.parametrize("key", KEYS)
def test_environment_beats_env_file(key: str, tmp_path: Path) -> None:
    """An ACHILLES_* variable wins over the same key in the .env file."""
    attr, _, env_value, file_value, _ = LAYERS[key]
    env_file = write_env(tmp_path / "cfg.env", **{key: file_value})
    settings = load_settings(environ={f"ACHILLES_{key}": env_value}, env_file=env_file)
    assert getattr(settings, attr) == _typed(key, env_value)


@pytest.mark.parametrize("key", KEYS)
def test_explicit_argument_beats_environment_and_env_file(key: str, tmp_path: Path) -> None:
    """An explicit argument wins over both the ACHILLES_* variable and the .env file."""
    attr, explicit, env_value, file_value, _ = LAYERS[key]
    env_file = write_env(tmp_path / "cfg.env", **{key: file_value})
    settings = load_settings(
        **{attr: explicit},  # type: ignore[arg-type]
        environ={f"ACHILLES_{key}": env_value},
        env_file=env_file,
    )
    assert getattr(settings, attr) == explicit


def test_all_layers_resolve_independently_per_key(tmp_path: Path) -> None:
    """Each key is resolved on its own: one key may come from each layer in the same call."""
    env_file = write_env(tmp_path / "cfg.env", PORT="3333", USERNAME="file-user", SECRET_KEY="file-secret")
    settings = load_settings(
        host="10.0.0.1",
        environ={"ACHILLES_PORT": "2222", "ACHILLES_USERNAME": "env-user"},
        env_file=env_file,
    )
    assert (settings.host, settings.port, settings.username, settings.secret_key) == (
        "10.0.0.1",
        2222,
        "env-user",
        "file-secret",
    )


def test_env_file_in_current_directory_is_read_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without env_file, the .env of the current directory supplies all four keys."""
    write_env(tmp_path / ".env", HOST="10.9.8.7", PORT="4321", USERNAME="alice", SECRET_KEY="dot-secret")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert (settings.host, settings.port, settings.username, settings.secret_key) == (
        "10.9.8.7",
        4321,
        "alice",
        "dot-secret",
    )
    assert settings.host_configured is True


def test_env_file_named_by_achilles_env_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ACHILLES_ENV_FILE in the process environment names the .env file read by default."""
    named = write_env(tmp_path / "elsewhere.env", HOST="10.1.1.1", PORT="5555")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ACHILLES_ENV_FILE", str(named))
    settings = load_settings(environ={})
    assert (settings.host, settings.port) == ("10.1.1.1", 5555)


def test_unprefixed_environment_variables_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain HOST, PORT, USERNAME and SECRET_KEY variables (set by many shells) do not configure achilles."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        environ={"HOST": "shell-host", "PORT": "1234", "USERNAME": "shell-user", "SECRET_KEY": "shell"}
    )
    assert settings == Settings()
    assert settings.host_configured is False


def test_empty_environment_value_falls_through_to_env_file(tmp_path: Path) -> None:
    """An empty ACHILLES_HOST counts as unset, so the .env value applies."""
    env_file = write_env(tmp_path / "cfg.env", HOST="10.0.0.3")
    settings = load_settings(environ={"ACHILLES_HOST": ""}, env_file=env_file)
    assert settings.host == "10.0.0.3"
    assert settings.host_configured is True


def test_host_configured_is_false_when_nothing_sets_an_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """User and secret but no host or port leave host_configured False (the embedded cluster case)."""
    write_env(tmp_path / ".env", USERNAME="alice", SECRET_KEY="s")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={"ACHILLES_SECRET_KEY": "e"})
    assert settings.host == DEFAULT_HOST
    assert settings.host_configured is False


def test_a_port_alone_points_at_a_server_on_the_default_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port without a host means a server on 127.0.0.1, not the embedded cluster."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings(port=1000, environ={})
    assert (settings.host, settings.port) == (DEFAULT_HOST, 1000)
    assert settings.host_configured is True


@pytest.mark.parametrize("layer", ["argument", "environment", "env_file"])
def test_host_configured_is_true_when_any_layer_sets_a_host(layer: str, tmp_path: Path) -> None:
    """A host from any layer, even the default address itself, marks host_configured True."""
    env_file = write_env(tmp_path / "cfg.env", **({"HOST": "127.0.0.1"} if layer == "env_file" else {}))
    settings = load_settings(
        host="127.0.0.1" if layer == "argument" else None,
        environ={"ACHILLES_HOST": "127.0.0.1"} if layer == "environment" else {},
        env_file=env_file,
    )
    assert settings.host == "127.0.0.1"
    assert settings.host_configured is True


def test_no_dotenv_disables_the_default_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ACHILLES_NO_DOTENV set, the current directory's .env is not read at all."""
    write_env(tmp_path / ".env", HOST="10.9.8.7", PORT="4321", USERNAME="alice", SECRET_KEY="dot-secret")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ACHILLES_NO_DOTENV", "1")
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.host_configured is False


def test_missing_explicit_env_file_raises(tmp_path: Path) -> None:
    """An env_file that was named explicitly but does not exist is a ConfigurationError naming it."""
    missing = tmp_path / "nope.env"
    with pytest.raises(ConfigurationError, match=r"nope\.env") as caught:
        load_settings(environ={}, env_file=missing)
    assert "does not exist" in str(caught.value)


def test_missing_default_env_file_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No .env in the current directory simply means defaults."""
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}) == Settings()


@pytest.mark.parametrize(
    ("raw", "expected_message"),
    [
        ("abc", "PORT must be a whole number, not 'abc'"),
        ("70000", "PORT is out of range: 70000"),
        ("0", "PORT is out of range: 0"),
        ("-5", "PORT is out of range: -5"),
    ],
)
def test_malformed_port_from_environment_raises(raw: str, expected_message: str, tmp_path: Path) -> None:
    """A PORT from the environment that is not 1..65535 raises a ConfigurationError naming PORT."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(environ={"ACHILLES_PORT": raw}, env_file=write_env(tmp_path / "cfg.env"))
    assert str(caught.value) == expected_message


@pytest.mark.parametrize("raw", ["abc", "70000", "0"])
def test_malformed_port_from_env_file_raises(raw: str, tmp_path: Path) -> None:
    """A PORT from the .env file that is not 1..65535 raises a ConfigurationError naming PORT."""
    with pytest.raises(ConfigurationError, match="PORT"):
        load_settings(environ={}, env_file=write_env(tmp_path / "cfg.env", PORT=raw))


def test_explicit_port_zero_is_allowed(tmp_path: Path) -> None:
    """port=0 as an explicit argument means "any free port" and overrides environment and .env."""
    env_file = write_env(tmp_path / "cfg.env", PORT="3333")
    settings = load_settings(port=0, environ={"ACHILLES_PORT": "2222"}, env_file=env_file)
    assert settings.port == 0


# -- the secret is masked -----------------------------------------------------


def test_secret_never_appears_in_repr_or_str(tmp_path: Path) -> None:
    """repr() and str() of Settings mask the secret as '***' and never show its text."""
    secret = "s3cr3t-value-that-must-not-leak"
    env_file = write_env(tmp_path / "cfg.env", SECRET_KEY=secret)
    for settings in (Settings(secret_key=secret), load_settings(environ={}, env_file=env_file)):
        assert settings.secret_key == secret
        for text in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
            assert secret not in text
            assert "secret_key='***'" in text


def test_repr_without_secret_shows_empty() -> None:
    """A Settings with no secret shows secret_key='' so a missing secret is visible."""
    assert repr(Settings()) == (
        f"Settings(host='{DEFAULT_HOST}', port={DEFAULT_PORT}, username='', secret_key='',"
        " processes=None, max_body=" + str(Settings().max_body) + ", tls_cert='', tls_ca='')"
    )


# -- genConfig ----------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_genconfig_writes_explicit_values_verbatim_with_mode_0600(tmp_path: Path) -> None:
    """genConfig writes exactly the four given keys, one per line, to a file of mode 0600."""
    path = genConfig("10.2.3.4", 4567, "bob", "my-Secret_123", path=tmp_path / "x.env", interactive=False)
    assert path == (tmp_path / "x.env").resolve()
    assert (
        path.read_text(encoding="utf-8")
        == "HOST=10.2.3.4\nPORT=4567\nUSERNAME=bob\nSECRET_KEY=my-Secret_123\n"
    )
    assert _mode(path) == 0o600


def test_genconfig_file_reads_back_with_load_settings(tmp_path: Path) -> None:
    """load_settings(env_file=...) returns exactly what genConfig wrote."""
    path = genConfig("10.2.3.4", 4567, "bob", "my-secret", path=tmp_path / "x.env", interactive=False)
    settings = load_settings(environ={}, env_file=path)
    assert (settings.host, settings.port, settings.username, settings.secret_key) == (
        "10.2.3.4",
        4567,
        "bob",
        "my-secret",
    )
    assert settings.host_configured is True


def test_genconfig_defaults_and_generated_secret(tmp_path: Path) -> None:
    """With nothing given and interactive=False, defaults are written with a long generated secret."""
    path = genConfig(path=tmp_path / "x.env", interactive=False)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[:3] == [f"HOST={DEFAULT_HOST}", f"PORT={DEFAULT_PORT}", "USERNAME="]
    assert len(lines) == 4
    key, _, secret = lines[3].partition("=")
    assert key == "SECRET_KEY"
    assert len(secret) >= 40
    assert _mode(path) == 0o600


def test_genconfig_generates_a_different_secret_each_time(tmp_path: Path) -> None:
    """Two genConfig calls without a secret generate two different secrets."""
    first = load_settings(environ={}, env_file=genConfig(path=tmp_path / "a.env", interactive=False))
    second = load_settings(environ={}, env_file=genConfig(path=tmp_path / "b.env", interactive=False))
    assert len(first.secret_key) >= 40
    assert len(second.secret_key) >= 40
    assert first.secret_key != second.secret_key


def test_genconfig_tightens_mode_of_an_existing_file(tmp_path: Path) -> None:
    """Overwriting an existing world-readable file leaves it with mode 0600 and only the new content."""
    path = tmp_path / "x.env"
    path.write_text("OLD=1\n" * 50, encoding="utf-8")
    os.chmod(path, 0o644)
    genConfig("127.0.0.1", 1000, "u", "s", path=path, interactive=False)
    assert _mode(path) == 0o600
    assert path.read_text(encoding="utf-8") == "HOST=127.0.0.1\nPORT=1000\nUSERNAME=u\nSECRET_KEY=s\n"


def test_genconfig_default_path_is_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """genConfig() writes ./.env in the current directory and never into the installed package."""
    package_dir = Path(achilles_like.__file__).resolve().parent
    package_env = package_dir / ".env"
    before = package_env.exists() and package_env.stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)
    path = genConfig(interactive=False)
    assert path == (tmp_path / ".env").resolve()
    assert path.is_file()
    assert package_dir not in path.parents
    assert (package_env.exists() and package_env.stat().st_mtime_ns) == before


def test_genconfig_relative_path_is_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path is resolved against the current directory, and the absolute path is returned."""
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    path = genConfig(path="sub/cluster.env", interactive=False)
    assert path == (tmp_path / "sub" / "cluster.env").resolve()
    assert path.is_absolute()
    assert path.is_file()


@pytest.mark.parametrize("bad", ['a"b', "a'b", "a\nb", "a\rb"])
@pytest.mark.parametrize("field", ["host", "username", "secret_key"])
def test_genconfig_refuses_quotes_and_line_breaks(field: str, bad: str, tmp_path: Path) -> None:
    """A value with a quote or line break raises ConfigurationError naming the key, and no file is written."""
    path = tmp_path / "x.env"
    values = {"host": "127.0.0.1", "port": 1000, "username": "u", "secret_key": "s", field: bad}
    with pytest.raises(ConfigurationError, match=field.upper()):
        genConfig(**values, path=path, interactive=False)  # type: ignore[arg-type]
    assert not path.exists()


def test_genconfig_refuses_out_of_range_port(tmp_path: Path) -> None:
    """An explicit port above 65535 raises a ConfigurationError naming PORT, and no file is written."""
    path = tmp_path / "x.env"
    with pytest.raises(ConfigurationError, match="PORT"):
        genConfig(port=70000, path=path, interactive=False)
    assert not path.exists()


def test_genconfig_interactive_uses_the_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """interactive=True asks HOST, PORT and USERNAME on input(), the secret on getpass(), and writes them."""
    answers = iter(["10.5.5.5", "6543", "carol"])
    prompts: list[str] = []
    secret_prompts: list[str] = []

    def fake_input(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        secret_prompts.append(prompt)
        return "typed-secret"

    monkeypatch.setattr(builtins, "input", fake_input)
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    monkeypatch.setattr(getpass, "getuser", lambda: "login-name")
    path = genConfig(path=tmp_path / "x.env", interactive=True)
    assert (
        path.read_text(encoding="utf-8")
        == "HOST=10.5.5.5\nPORT=6543\nUSERNAME=carol\nSECRET_KEY=typed-secret\n"
    )
    assert _mode(path) == 0o600
    assert [p.split(" ")[0] for p in prompts] == ["HOST", "PORT", "USERNAME"]
    assert prompts[2] == "USERNAME [login-name]: "
    assert len(secret_prompts) == 1
    assert "SECRET_KEY" in secret_prompts[0]


def test_genconfig_interactive_empty_answers_take_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pressing Enter at every prompt keeps the defaults, the login name, and generates a secret."""
    monkeypatch.setattr(builtins, "input", lambda prompt="": "")
    monkeypatch.setattr(getpass, "getpass", lambda prompt="", stream=None: "")
    monkeypatch.setattr(getpass, "getuser", lambda: "login-name")
    path = genConfig(path=tmp_path / "x.env", interactive=True)
    settings = load_settings(environ={}, env_file=path)
    assert (settings.host, settings.port, settings.username) == (DEFAULT_HOST, DEFAULT_PORT, "login-name")
    assert len(settings.secret_key) >= 40


def test_genconfig_interactive_does_not_ask_for_given_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values passed as arguments are not asked for, even with interactive=True."""

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("asked for a value that was given")

    monkeypatch.setattr(builtins, "input", refuse)
    monkeypatch.setattr(getpass, "getpass", refuse)
    path = genConfig("10.0.0.9", 1234, "dave", "given", path=tmp_path / "x.env", interactive=True)
    assert path.read_text(encoding="utf-8") == "HOST=10.0.0.9\nPORT=1234\nUSERNAME=dave\nSECRET_KEY=given\n"


def test_genconfig_is_not_interactive_without_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With interactive left unset and stdin not a terminal, genConfig asks nothing and generates a secret."""

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("prompted without a terminal")

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    monkeypatch.setattr(builtins, "input", refuse)
    monkeypatch.setattr(getpass, "getpass", refuse)
    path = genConfig(path=tmp_path / "x.env")
    settings = load_settings(environ={}, env_file=path)
    assert (settings.host, settings.port, settings.username) == (DEFAULT_HOST, DEFAULT_PORT, "")
    assert len(settings.secret_key) >= 40


# -- check_bind_allowed -------------------------------------------------------


def test_bind_refuses_all_interfaces_without_a_secret() -> None:
    """Listening on 0.0.0.0 with no SECRET_KEY raises a ConfigurationError that names SECRET_KEY."""
    with pytest.raises(ConfigurationError, match="SECRET_KEY") as caught:
        check_bind_allowed(Settings(host="0.0.0.0"))
    assert "0.0.0.0" in str(caught.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_bind_allows_loopback_without_a_secret(host: str) -> None:
    """Listening on a loopback address without a secret is allowed."""
    assert check_bind_allowed(Settings(host=host)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::"])
def test_bind_allows_any_interface_with_a_secret(host: str) -> None:
    """Listening beyond loopback is allowed once a secret is set."""
    assert check_bind_allowed(Settings(host=host, secret_key="s")) is None
