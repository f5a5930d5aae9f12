"""TLS end to end: a server with a certificate from a private CA, nodes and callers that verify it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import tasks
from tls_certs import TlsFiles, make_tls_files

import achilles_like as al
from achilles_like import ClusterConnectionError, ConfigurationError, LocalCluster
from achilles_like.client.connection import Connection
from achilles_like.config import Settings
from achilles_like.liveness import KEEPALIVE_IDLE, tcp_socket
from achilles_like.server.cluster import check_bind_allowed


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A private CA and a server certificate for 127.0.0.1."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_cluster(tls_files: TlsFiles) -> Iterator[LocalCluster]:
    """A server listening with TLS and one node that verifies it."""
    with LocalCluster(
        nodes=1, processes=2, tls_cert=tls_files.cert, tls_key=tls_files.key, tls_ca=tls_files.ca
    ) as c:
        yield c


def test_map_over_tls_gives_exact_results(tls_cluster: LocalCluster) -> None:
    """With TLS_CA set, a controller verifies the server's certificate and gets exact results."""
    assert tls_cluster.settings.tls_ca  # the with-block's settings carry the CA
    assert al.map(tasks.square, range(50)) == [x * x for x in range(50)]
    assert len(al.getClusterStatus()["nodes"]) == 1  # the node verified the server too


def test_large_bodies_cross_tls_intact_in_both_directions(tls_cluster: LocalCluster) -> None:
    """Arguments and results over the writer's slice size (fed by a producer through TLS) arrive intact."""
    items = [bytes([n]) * (3 << 20) + b"end" for n in range(4)]
    assert al.map(tasks.identity, items, chunksize=1) == items


def test_a_plain_controller_cannot_talk_to_a_tls_server(
    tls_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without TLS settings a controller gets an error naming TLS, from the TLS layer's refusal of its
    preamble, not from the server's authentication timeout."""
    for key in ("ACHILLES_TLS", "ACHILLES_TLS_CA"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ClusterConnectionError, match="TLS"):
        al.map(tasks.square, [1], host="127.0.0.1", port=tls_cluster.port, secret_key=tls_cluster.secret_key)


def test_a_tls_controller_talking_to_a_plain_server_is_told_so(tls_files: TlsFiles) -> None:
    """A controller with TLS_CA reaching a server without TLS gets an error that says to drop TLS."""
    with LocalCluster(nodes=0) as plain:
        settings = plain.settings.with_overrides(tls_ca=tls_files.ca)
        with pytest.raises(ClusterConnectionError, match="does not use TLS"):
            Connection.open(settings)


def test_controller_connections_have_tcp_keepalive(tls_cluster: LocalCluster) -> None:
    """A controller's socket to the server has TCP keepalive on, so a vanished server is noticed."""
    with Connection.open(tls_cluster.settings, role="admin") as connection:
        handle = tcp_socket(connection._protocol.transport)
        assert handle is not None
        assert handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE


def test_a_certificate_from_another_ca_is_refused(tls_cluster: LocalCluster, tmp_path: Path) -> None:
    """A controller trusting a different CA refuses the server with a message about TLS_CA."""
    stranger = make_tls_files(tmp_path / "other", ca_name="some other CA")
    settings = tls_cluster.settings.with_overrides(tls_ca=stranger.ca)
    with pytest.raises(ClusterConnectionError, match="TLS_CA"):
        Connection.open(settings)


def test_a_certificate_for_another_address_is_refused(tls_files: TlsFiles, tmp_path: Path) -> None:
    """A server whose certificate names another address is refused, though its CA is trusted."""
    wrong = make_tls_files(tmp_path / "wrong", ip="10.9.8.7")
    with (
        LocalCluster(nodes=0, tls_cert=wrong.cert, tls_key=wrong.key, tls_ca=wrong.ca) as cluster,
        pytest.raises(ClusterConnectionError, match="does that certificate name this host"),
    ):
        Connection.open(cluster.settings)


def test_unreadable_tls_files_are_a_clear_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TLS_CA path that does not exist is a ConfigurationError naming the setting and the path."""
    missing = str(tmp_path / "missing.pem")
    monkeypatch.setenv("ACHILLES_TLS_CA", missing)
    with pytest.raises(ConfigurationError, match=f"TLS_CA {missing!r}"):
        al.map(tasks.square, [1], host="127.0.0.1", port=1, secret_key="s")


def test_cert_without_key_is_refused(tls_files: TlsFiles) -> None:
    """TLS_CERT without TLS_KEY is a configuration error naming both."""
    from achilles_like.tls import server_context

    with pytest.raises(ConfigurationError, match="TLS_CERT and TLS_KEY"):
        server_context(Settings(tls_cert=tls_files.cert))


def test_beyond_loopback_needs_a_secret_or_mutual_tls(tls_files: TlsFiles) -> None:
    """0.0.0.0 needs SECRET_KEY or mutual TLS (cert, key and CA); a server certificate alone is not enough."""
    with pytest.raises(ConfigurationError, match="mutual TLS"):
        check_bind_allowed(Settings(host="0.0.0.0", tls_cert=tls_files.cert, tls_key=tls_files.key))
    check_bind_allowed(
        Settings(host="0.0.0.0", tls_cert=tls_files.cert, tls_key=tls_files.key, tls_ca=tls_files.ca)
    )
    check_bind_allowed(Settings(host="0.0.0.0", secret_key="s"))


def _loads_cryptography(pid: int) -> bool:
    """Whether process ``pid`` has mapped ``cryptography``'s native bindings (what pyOpenSSL loads)."""
    return "cryptography" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps")
def test_a_cluster_without_tls_leaves_pyopenssl_unloaded_but_the_user_s_code_may_import_it(
    cluster: LocalCluster,
) -> None:
    """Server and node skip Twisted's TLS stack (a quarter of their imports); a task may import pyOpenSSL."""
    assert cluster.server is not None
    assert not _loads_cryptography(cluster.server.pid)
    assert not _loads_cryptography(cluster.nodes[0].pid)
    (where,) = al.map(
        tasks.module_file, ["OpenSSL"], host=cluster.host, port=cluster.port, secret_key=cluster.secret_key
    )
    assert Path(where).parent.name == "OpenSSL"


def test_a_tls_cluster_loads_pyopenssl_where_it_needs_it(tls_cluster: LocalCluster) -> None:
    """With TLS on, the server and the node load the TLS stack they use."""
    assert tls_cluster.server is not None
    assert _loads_cryptography(tls_cluster.server.pid)
    assert _loads_cryptography(tls_cluster.nodes[0].pid)
