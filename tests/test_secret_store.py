"""The per-user secret file, safe secret writing and the weak-secret policy: pure and fast, no network."""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

import pytest

from achilles_like.config import Settings, genConfig, generate_secret, load_settings
from achilles_like.errors import ConfigurationError
from achilles_like.secret_store import ensure_secret, read_secret_file, secret_path, stored_secret
from achilles_like.secret_strength import MIN_BITS, check_peer_secret, check_secret_strength, estimated_bits
from achilles_like.server.cluster import with_server_secret

STRONG = "Xk3-Fq9_Lm2Vb7Np4Rt8Ws1Yz6Hd5Gc0"


def test_secret_path_follows_xdg_config_home(private_config_home: Path) -> None:
    """The secret file lives in $XDG_CONFIG_HOME/achilles_like/secret, else ~/.config/achilles_like/secret."""
    assert secret_path() == private_config_home / "achilles_like" / "secret"
    assert secret_path({"HOME": "/home/ann"}) == Path("/home/ann/.config/achilles_like/secret")
    assert secret_path({"HOME": "/home/ann", "XDG_CONFIG_HOME": "relative"}) == Path(
        "/home/ann/.config/achilles_like/secret"
    )


def test_ensure_secret_creates_a_private_file_once(private_config_home: Path) -> None:
    """The first call stores the secret in a 0600 file in a 0700 directory; later calls return it."""
    secret, path, created = ensure_secret("first-" + generate_secret())
    assert created and secret.startswith("first-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again, _, created_again = ensure_secret("second-" + generate_secret())
    assert (again, created_again) == (secret, False)
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporary file left behind


def test_load_settings_reads_the_stored_secret_when_none_is_configured(private_config_home: Path) -> None:
    """With no SECRET_KEY anywhere, load_settings uses this user's stored secret; a configured one wins."""
    assert load_settings(environ={}).secret_key == ""
    secret, _, _ = ensure_secret(generate_secret())
    assert load_settings(environ={}).secret_key == secret
    assert load_settings(environ={"ACHILLES_SECRET_KEY": STRONG}).secret_key == STRONG


def test_load_settings_reads_secret_key_file(tmp_path: Path) -> None:
    """SECRET_KEY_FILE (argument or ACHILLES_SECRET_KEY_FILE) names a 0600 file holding the secret."""
    path = tmp_path / "key"
    path.write_text(STRONG + "\n", encoding="utf-8")
    path.chmod(0o600)
    assert load_settings(secret_key_file=str(path), environ={}).secret_key == STRONG
    assert load_settings(environ={"ACHILLES_SECRET_KEY_FILE": str(path)}).secret_key == STRONG


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    """A group- or world-readable secret file is refused with the chmod that fixes it."""
    path = tmp_path / "key"
    path.write_text(STRONG, encoding="utf-8")
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        read_secret_file(path)


def test_a_symlinked_secret_file_is_refused(tmp_path: Path) -> None:
    """A symlink in place of the secret file is not followed."""
    real = tmp_path / "real"
    real.write_text(STRONG, encoding="utf-8")
    real.chmod(0o600)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ConfigurationError, match="not a symlink"):
        read_secret_file(tmp_path / "link")


def test_stored_secret_is_empty_without_a_file(private_config_home: Path) -> None:
    """No stored secret file means no stored secret (nothing is created by reading)."""
    assert stored_secret() == ""
    assert not (private_config_home / "achilles_like").exists()


# -- the server makes a secret when none is configured -------------------------------------------


def test_server_without_a_secret_makes_and_stores_one(
    private_config_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A loopback server with no secret gets a strong stored one, and says where it is in its log."""
    with caplog.at_level(logging.WARNING, logger="achilles_like.server"):
        settings = with_server_secret(Settings(host="127.0.0.1"))
    assert estimated_bits(settings.secret_key) >= MIN_BITS
    assert settings.secret_key == stored_secret()
    assert str(secret_path()) in caplog.text
    assert with_server_secret(Settings(host="127.0.0.1")).secret_key == settings.secret_key


# -- weak secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret", ["", "password", "correcthorsebatterystaple", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]
)
def test_weak_secrets_score_under_128_bits(secret: str) -> None:
    """Short, dictionary-like or repetitive secrets are estimated under 128 bits."""
    assert estimated_bits(secret) < MIN_BITS


def test_generated_secrets_score_at_least_128_bits() -> None:
    """What genconfig writes, and secrets.token_hex(32), are estimated at 128 bits or more."""
    for _ in range(50):
        assert estimated_bits(generate_secret()) >= MIN_BITS
        assert estimated_bits(secrets.token_hex(32)) >= MIN_BITS
    assert estimated_bits(STRONG) >= MIN_BITS


@pytest.mark.parametrize("role", ["server", "node", "controller"])
def test_weak_secret_is_refused_beyond_loopback(role: str) -> None:
    """A weak secret for a non-loopback address is refused with advice naming achilles genconfig."""
    with pytest.raises(ConfigurationError, match="achilles genconfig"):
        check_secret_strength("password", "10.1.2.3", role)
    check_secret_strength(STRONG, "10.1.2.3", role)


def test_weak_secret_on_loopback_is_only_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """On loopback a weak secret is accepted with a warning."""
    with caplog.at_level(logging.WARNING, logger="achilles_like.secret"):
        check_secret_strength("password", "127.0.0.2", "node")
    assert "weak" in caplog.text


def test_every_role_checks_its_secret_beyond_loopback() -> None:
    """The server, a node and a controller each refuse a weak secret before connecting or listening."""
    from achilles_like.client.connection import Connection
    from achilles_like.node.agent import start_node

    weak = Settings(host="10.255.255.1", port=9, secret_key="password")
    with pytest.raises(ConfigurationError, match="weak"):
        with_server_secret(weak)
    with pytest.raises(ConfigurationError, match="weak"):
        start_node(weak, reactor=None)
    with pytest.raises(ConfigurationError, match="weak"):
        Connection.open(weak)
    check_peer_secret(Settings(host="10.255.255.1", tls_cert="c", tls_key="k", tls_ca="ca"), "node")


# -- genConfig writes safely ----------------------------------------------------------------------


def test_genconfig_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    """A symlink planted at the .env path is replaced by a new 0600 file; its target is untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n", encoding="utf-8")
    link = tmp_path / ".env"
    link.symlink_to(victim)
    written = genConfig("127.0.0.1", 1234, "u", STRONG, path=link, interactive=False)
    assert written == link
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert not link.is_symlink()
    assert stat.S_IMODE(link.stat().st_mode) == 0o600
    assert load_settings(environ={}, env_file=link).secret_key == STRONG


def test_genconfig_never_exposes_the_secret_with_a_permissive_umask(tmp_path: Path) -> None:
    """Even with umask 0 and an existing 0666 file, the new file is 0600 from its creation."""
    path = tmp_path / ".env"
    path.write_text("old\n", encoding="utf-8")
    path.chmod(0o666)
    old_inode = path.stat().st_ino
    previous = os.umask(0)
    try:
        genConfig(secret_key=STRONG, path=path, interactive=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != old_inode  # a new file renamed into place, not the old one rewritten
