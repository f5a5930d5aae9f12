"""Tests for the mutual HMAC handshake in ``achilles_like.protocol.handshake``.

Both sides are sans-I/O, so a conversation is just frames handed from one object
to the other; nonces are fixed so every exchange can be replayed exactly.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from achilles_like.errors import AuthenticationError, ProtocolError, ProtocolViolationError
from achilles_like.protocol.frames import Frame, FrameDecoder, encode_frame
from achilles_like.protocol.handshake import (
    NONCE_BYTES,
    PROTOCOL_VERSION,
    ROLES,
    ClientHandshake,
    HandshakeState,
    Identity,
    ServerHandshake,
)

SECRET = b"correct horse battery staple"
WRONG_SECRET = b"incorrect horse battery staple"
SERVER_NONCE = bytes(range(NONCE_BYTES))
OTHER_SERVER_NONCE = bytes(range(100, 100 + NONCE_BYTES))
CLIENT_NONCE = bytes(range(200, 200 + NONCE_BYTES))


def decode_one(data: bytes) -> Frame:
    """Decode bytes that must hold exactly one whole frame."""
    decoder = FrameDecoder()
    (frame,) = decoder.feed(data)
    assert decoder.buffered == 0
    return frame


def with_field(data: bytes, **changes: str) -> Frame:
    """Decode a one-frame message and return it with some fields replaced (a forgery)."""
    frame = decode_one(data)
    return Frame(frame.verb, {**frame.fields, **changes}, frame.body)


def without_field(data: bytes, key: str) -> Frame:
    """Decode a one-frame message and return it with one field removed."""
    frame = decode_one(data)
    return Frame(frame.verb, {k: v for k, v in frame.fields.items() if k != key}, frame.body)


def make_pair(
    client_secret: bytes = SECRET,
    server_secret: bytes = SECRET,
    role: str = "controller",
    user: str = "alice",
    server_user: str | None = None,
    server_nonce: bytes = SERVER_NONCE,
) -> tuple[ServerHandshake, ClientHandshake]:
    """Build a fresh server and client handshake with fixed nonces."""
    server = ServerHandshake(server_secret, server_nonce, username=server_user)
    client = ClientHandshake(client_secret, CLIENT_NONCE, role=role, username=user)
    return server, client


def run(server: ServerHandshake, client: ClientHandshake) -> tuple[bytes, bytes, bytes]:
    """Run a whole exchange and return the HELLO, AUTH and WELCOME bytes."""
    hello = server.hello()
    auth = client.receive(decode_one(hello))
    welcome = server.receive(decode_one(auth))
    assert client.receive(decode_one(welcome)) == b""
    return hello, auth, welcome


def client_mac(client_nonce: str, role: str, user: str = "") -> str:
    """Compute, independently of the module, the AUTH mac for SECRET and SERVER_NONCE."""
    message = f"achilles_like/{PROTOCOL_VERSION} client|{SERVER_NONCE.hex()}|{client_nonce}|{role}|{user}"
    return hmac.new(SECRET, message.encode(), hashlib.sha256).hexdigest()


def refusal(error: pytest.ExceptionInfo[AuthenticationError]) -> Frame:
    """Decode the ERROR frame a refused server handshake wants to send."""
    reply = error.value.reply  # type: ignore[attr-defined]
    assert isinstance(reply, bytes)
    frame = decode_one(reply)
    assert frame.verb == "ERROR"
    return frame


# --- the good path ---------------------------------------------------------------------------


def test_good_exchange_authenticates_both_sides() -> None:
    """With the same secret both sides end AUTHENTICATED and the server knows role and user."""
    server, client = make_pair(server_user="alice")
    before = (server.state, client.state)
    run(server, client)
    assert before == (HandshakeState.WAITING, HandshakeState.WAITING)
    assert (server.state, client.state) == (HandshakeState.AUTHENTICATED,) * 2
    assert server.identity == Identity(role="controller", username="alice")


def test_frames_carry_the_documented_fields() -> None:
    """HELLO, AUTH and WELCOME carry exactly the fields the protocol document lists."""
    hello, auth, welcome = run(*make_pair(role="node", user="n1"))
    assert decode_one(hello) == Frame("HELLO", {"proto": "1", "nonce": SERVER_NONCE.hex()})
    auth_frame = decode_one(auth)
    assert auth_frame.verb == "AUTH"
    assert set(auth_frame.fields) == {"proto", "role", "user", "nonce", "mac"}
    assert auth_frame.fields["nonce"] == CLIENT_NONCE.hex()
    assert decode_one(welcome).verb == "WELCOME"
    assert set(decode_one(welcome).fields) == {"proto", "mac"}


def test_auth_mac_matches_the_documented_formula() -> None:
    """The AUTH mac is HMAC-SHA256(secret, "achilles_like/1 client|Ns|Nc|role|user") in hex."""
    server, client = make_pair(role="admin", user="alice")
    auth = decode_one(client.receive(decode_one(server.hello())))
    assert auth.fields["mac"] == client_mac(CLIENT_NONCE.hex(), "admin", "alice")


def test_client_state_moves_through_proving() -> None:
    """The client is PROVING after answering HELLO and AUTHENTICATED after a valid WELCOME."""
    server, client = make_pair()
    seen = [client.state]
    auth = client.receive(decode_one(server.hello()))
    seen.append(client.state)
    client.receive(decode_one(server.receive(decode_one(auth))))
    seen.append(client.state)
    assert seen == [HandshakeState.WAITING, HandshakeState.PROVING, HandshakeState.AUTHENTICATED]


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_role_authenticates(role: str) -> None:
    """Nodes, controllers and admins all pass the handshake with the right secret."""
    server, client = make_pair(role=role, user="alice", server_user="alice")
    run(server, client)
    assert server.identity == Identity(role, "alice")


def test_awkward_username_survives_the_wire() -> None:
    """A username with spaces, '=', '|' and unicode is authenticated and reported intact."""
    user = "Ålice = admin | ops 日本"
    server, client = make_pair(user=user, server_user=user)
    run(server, client)
    assert server.identity == Identity("controller", user)


def test_handshake_composes_with_a_byte_by_byte_decoder() -> None:
    """Each side's bytes, decoded one byte at a time, drive the other side to AUTHENTICATED."""
    server, client = make_pair(role="node", user="worker 7")
    to_client, to_server = FrameDecoder(), FrameDecoder()

    def deliver(decoder: FrameDecoder, data: bytes) -> list[Frame]:
        frames = [frame for i in range(len(data)) for frame in decoder.feed(data[i : i + 1])]
        assert decoder.buffered == 0
        return frames

    (hello,) = deliver(to_client, server.hello())
    (auth,) = deliver(to_server, client.receive(hello))
    (welcome,) = deliver(to_client, server.receive(auth))
    assert client.receive(welcome) == b""
    assert server.state is client.state is HandshakeState.AUTHENTICATED
    assert server.identity == Identity("node", "worker 7")


def test_same_nonces_replay_the_same_conversation() -> None:
    """With fixed nonces two runs produce byte-identical conversations (deterministic)."""
    assert run(*make_pair()) == run(*make_pair())


# --- wrong secrets ---------------------------------------------------------------------------


def test_wrong_client_secret_is_refused_by_the_server() -> None:
    """A client with the wrong secret makes the server raise with an ERROR reply and FAIL."""
    server, client = make_pair(client_secret=WRONG_SECRET)
    auth = client.receive(decode_one(server.hello()))
    with pytest.raises(AuthenticationError, match="authentication failed") as error:
        server.receive(decode_one(auth))
    reply = refusal(error)
    assert reply.fields["code"] == "auth"
    assert "authentication failed" in reply.fields["msg"]
    assert server.state is HandshakeState.FAILED
    assert server.identity is None


def test_client_relays_the_server_refusal() -> None:
    """The ERROR frame the server sends makes the client fail with the server's message."""
    server, client = make_pair(client_secret=WRONG_SECRET)
    auth = client.receive(decode_one(server.hello()))
    with pytest.raises(AuthenticationError) as error:
        server.receive(decode_one(auth))
    with pytest.raises(AuthenticationError, match="check SECRET_KEY"):
        client.receive(refusal(error))
    assert client.state is HandshakeState.FAILED


def test_server_with_wrong_secret_is_refused_by_the_client() -> None:
    """A server that cannot prove the secret is rejected by the client (mutual authentication)."""
    client = ClientHandshake(SECRET, CLIENT_NONCE, role="node")
    client.receive(decode_one(ServerHandshake(SECRET, SERVER_NONCE).hello()))
    # An impostor that skips checking AUTH answers with the WELCOME a ServerHandshake holding
    # the wrong secret computes for these very nonces, role and user.
    impostor = ServerHandshake(WRONG_SECRET, SERVER_NONCE)
    impostor_peer = ClientHandshake(WRONG_SECRET, CLIENT_NONCE, role="node")
    welcome = impostor.receive(decode_one(impostor_peer.receive(decode_one(impostor.hello()))))
    with pytest.raises(AuthenticationError, match="could not prove"):
        client.receive(decode_one(welcome))
    assert client.state is HandshakeState.FAILED


def test_server_with_wrong_secret_refuses_the_client_first() -> None:
    """An honest server holding the wrong secret refuses the AUTH and never sends WELCOME."""
    server, client = make_pair(server_secret=WRONG_SECRET)
    auth = client.receive(decode_one(server.hello()))
    with pytest.raises(AuthenticationError, match="authentication failed"):
        server.receive(decode_one(auth))
    assert server.state is HandshakeState.FAILED


# --- usernames -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["controller", "admin"])
def test_username_mismatch_is_refused_for_controllers_and_admins(role: str) -> None:
    """A server with a USERNAME refuses a controller or admin that names another user."""
    server, client = make_pair(role=role, user="mallory", server_user="alice")
    auth = client.receive(decode_one(server.hello()))
    with pytest.raises(AuthenticationError, match="USERNAME") as error:
        server.receive(decode_one(auth))
    assert refusal(error).fields["code"] == "auth"
    assert server.state is HandshakeState.FAILED


def test_username_is_ignored_for_nodes() -> None:
    """A node is authenticated by the secret alone, whatever username it sends."""
    server, client = make_pair(role="node", user="somebody-else", server_user="alice")
    run(server, client)
    assert server.identity == Identity("node", "somebody-else")


def test_server_without_username_accepts_any_user() -> None:
    """A server configured with no USERNAME (None or empty) accepts any controller user."""
    for configured in (None, ""):
        server, client = make_pair(user="anyone", server_user=configured)
        run(server, client)
        assert server.state is HandshakeState.AUTHENTICATED


def test_username_is_bound_into_the_mac() -> None:
    """Changing the user field of a valid AUTH in transit breaks the MAC."""
    server, client = make_pair(user="alice")
    auth = client.receive(decode_one(server.hello()))
    with pytest.raises(AuthenticationError, match="SECRET_KEY"):
        server.receive(with_field(auth, user="root"))


def test_role_is_bound_into_the_mac() -> None:
    """Upgrading a node's valid AUTH to the admin role in transit breaks the MAC."""
    server, client = make_pair(role="node")
    auth = client.receive(decode_one(server.hello()))
    with pytest.raises(AuthenticationError):
        server.receive(with_field(auth, role="admin"))


def test_client_refuses_an_unknown_role() -> None:
    """ClientHandshake rejects a role outside node/controller/admin at construction."""
    with pytest.raises(ValueError, match="role must be one of"):
        ClientHandshake(SECRET, CLIENT_NONCE, role="root")


# --- versions --------------------------------------------------------------------------------


def test_server_names_both_versions_when_the_client_is_newer() -> None:
    """A client AUTH with another proto is refused with code=version naming both versions."""
    server, client = make_pair()
    auth = client.receive(decode_one(server.hello()))
    with pytest.raises(AuthenticationError, match="version") as error:
        server.receive(with_field(auth, proto="2"))
    message = str(error.value)
    assert f"version {PROTOCOL_VERSION}" in message and "version 2" in message
    reply = refusal(error)
    assert reply.fields["code"] == "version"
    assert "version 2" in reply.fields["msg"]
    assert server.state is HandshakeState.FAILED


def test_client_names_both_versions_when_the_server_is_newer() -> None:
    """A HELLO with another proto makes the client fail naming both versions."""
    server, client = make_pair()
    with pytest.raises(AuthenticationError) as error:
        client.receive(with_field(server.hello(), proto="7"))
    message = str(error.value)
    assert f"version {PROTOCOL_VERSION}" in message and "version 7" in message
    assert client.state is HandshakeState.FAILED


def test_missing_version_is_a_version_mismatch() -> None:
    """An AUTH without a proto field is refused as a version mismatch, not accepted."""
    server, client = make_pair()
    auth = client.receive(decode_one(server.hello()))
    with pytest.raises(AuthenticationError, match="version") as error:
        server.receive(without_field(auth, "proto"))
    assert refusal(error).fields["code"] == "version"


# --- replay, reflection and forgery ----------------------------------------------------------


def test_replayed_auth_fails_against_a_new_nonce() -> None:
    """An AUTH recorded on one connection is refused by a server that sent another nonce."""
    _, recorded_auth, _ = run(*make_pair())
    fresh = ServerHandshake(SECRET, OTHER_SERVER_NONCE)
    fresh.hello()
    with pytest.raises(AuthenticationError, match="authentication failed"):
        fresh.receive(decode_one(recorded_auth))
    assert fresh.state is HandshakeState.FAILED


def test_replayed_welcome_fails_against_a_new_client_nonce() -> None:
    """A WELCOME recorded on one connection is refused by a client using another nonce."""
    _, _, recorded_welcome = run(*make_pair())
    server = ServerHandshake(SECRET, SERVER_NONCE)
    client = ClientHandshake(SECRET, bytes(NONCE_BYTES), role="controller", username="alice")
    client.receive(decode_one(server.hello()))
    with pytest.raises(AuthenticationError, match="could not prove"):
        client.receive(decode_one(recorded_welcome))


def test_reflected_client_mac_is_not_a_valid_welcome() -> None:
    """Echoing the client's own AUTH mac back as WELCOME fails: the labels differ."""
    server, client = make_pair()
    auth = decode_one(client.receive(decode_one(server.hello())))
    forged = encode_frame("WELCOME", proto=PROTOCOL_VERSION, mac=auth.fields["mac"])
    with pytest.raises(AuthenticationError, match="could not prove"):
        client.receive(decode_one(forged))
    assert client.state is HandshakeState.FAILED


def test_reflected_auth_frame_is_not_a_valid_welcome() -> None:
    """Echoing the client's whole AUTH frame back is refused as an unexpected frame."""
    server, client = make_pair()
    auth = client.receive(decode_one(server.hello()))
    with pytest.raises(AuthenticationError, match="unexpected AUTH"):
        client.receive(decode_one(auth))


def test_server_welcome_mac_is_not_a_valid_auth() -> None:
    """A server's WELCOME mac presented as an AUTH mac on the same nonces is refused."""
    server, client = make_pair()
    _, auth, welcome = run(server, client)
    fresh = ServerHandshake(SECRET, SERVER_NONCE)
    fresh.hello()
    with pytest.raises(AuthenticationError):
        fresh.receive(with_field(auth, mac=decode_one(welcome).fields["mac"]))


def test_welcome_without_mac_is_refused() -> None:
    """A WELCOME with no mac field is refused."""
    server, client = make_pair()
    client.receive(decode_one(server.hello()))
    with pytest.raises(AuthenticationError, match="could not prove"):
        client.receive(Frame("WELCOME", {"proto": "1"}))


# --- truncated and out-of-order exchanges ----------------------------------------------------


@pytest.mark.parametrize("missing", ["role", "user", "nonce", "mac"])
def test_auth_missing_a_field_is_refused(missing: str) -> None:
    """An AUTH missing role, user, nonce or mac fails cleanly with AuthenticationError."""
    server, client = make_pair(user="alice")
    auth = client.receive(decode_one(server.hello()))
    with pytest.raises(AuthenticationError) as error:
        server.receive(without_field(auth, missing))
    assert refusal(error).fields["code"] == "auth"
    assert server.state is HandshakeState.FAILED


def test_bare_auth_is_refused() -> None:
    """An AUTH with no fields at all is refused with AuthenticationError."""
    server = ServerHandshake(SECRET, SERVER_NONCE)
    with pytest.raises(AuthenticationError):
        server.receive(Frame("AUTH"))


@pytest.mark.parametrize(
    "nonce",
    ["", "00", "zz" * NONCE_BYTES, "AB" * NONCE_BYTES, "ab" * (NONCE_BYTES + 1), " " * 64],
)
def test_hello_with_a_bad_nonce_is_a_protocol_violation(nonce: str) -> None:
    """A HELLO whose nonce is not 64 lowercase hex digits raises ProtocolViolationError."""
    client = ClientHandshake(SECRET, CLIENT_NONCE, role="node")
    with pytest.raises(ProtocolViolationError, match="nonce"):
        client.receive(Frame("HELLO", {"proto": "1", "nonce": nonce}))
    assert client.state is HandshakeState.FAILED


def test_hello_without_a_nonce_is_a_protocol_violation() -> None:
    """A HELLO with no nonce field raises ProtocolViolationError."""
    client = ClientHandshake(SECRET, CLIENT_NONCE, role="node")
    with pytest.raises(ProtocolViolationError):
        client.receive(Frame("HELLO", {"proto": "1"}))


@pytest.mark.parametrize("nonce", ["", "ab", "ab" * (NONCE_BYTES + 1)])
def test_auth_with_a_bad_client_nonce_is_refused(nonce: str) -> None:
    """An AUTH whose client nonce has the wrong length is refused even with a valid MAC over it."""
    server = ServerHandshake(SECRET, SERVER_NONCE)
    mac = client_mac(nonce, "node")
    auth = Frame("AUTH", {"proto": "1", "role": "node", "user": "", "nonce": nonce, "mac": mac})
    with pytest.raises(AuthenticationError):
        server.receive(auth)


def test_auth_with_a_known_mac_but_unknown_role_is_refused() -> None:
    """An AUTH with a role outside ROLES is refused even if its MAC is valid."""
    server = ServerHandshake(SECRET, SERVER_NONCE)
    nonce = CLIENT_NONCE.hex()
    mac = client_mac(nonce, "root")
    with pytest.raises(AuthenticationError):
        server.receive(Frame("AUTH", {"proto": "1", "role": "root", "user": "", "nonce": nonce, "mac": mac}))


@pytest.mark.parametrize(
    "frame",
    [
        Frame("PING"),
        Frame("REGISTER", {"slots": "4", "processes": "4", "name": "n", "pid": "1"}),
        Frame("SUBMIT", {"label": "job"}, b"\x80\x04."),
        Frame("KILL", {"server": "1"}),
        Frame("STATUS"),
        Frame("HELLO", {"proto": "1", "nonce": "ab" * 32}),
        Frame("WELCOME", {"proto": "1", "mac": "00" * 32}),
    ],
    ids=lambda frame: frame.verb,
)
def test_server_refuses_anything_but_auth_first(frame: Frame) -> None:
    """Any frame other than AUTH as the first message is refused and fails the handshake."""
    server = ServerHandshake(SECRET, SERVER_NONCE)
    server.hello()
    with pytest.raises(AuthenticationError, match=f"expected AUTH.*got {frame.verb}") as error:
        server.receive(frame)
    assert refusal(error).fields["code"] == "auth"
    assert server.state is HandshakeState.FAILED
    assert server.identity is None


def test_failed_server_refuses_a_later_valid_auth() -> None:
    """Once the server handshake has failed, even a valid AUTH is refused."""
    server, client = make_pair()
    hello = server.hello()
    with pytest.raises(AuthenticationError):
        server.receive(Frame("PING"))
    auth = client.receive(decode_one(hello))
    with pytest.raises(AuthenticationError):
        server.receive(decode_one(auth))
    assert server.state is HandshakeState.FAILED


def test_second_auth_after_success_is_refused() -> None:
    """A second AUTH after the server authenticated the peer is refused."""
    server, client = make_pair()
    _, auth, _ = run(server, client)
    with pytest.raises(AuthenticationError):
        server.receive(decode_one(auth))


@pytest.mark.parametrize(
    "frame",
    [Frame("WELCOME", {"proto": "1", "mac": "00" * 32}), Frame("PING"), Frame("TASK")],
    ids=lambda frame: frame.verb,
)
def test_client_refuses_anything_but_hello_first(frame: Frame) -> None:
    """A client that receives anything but HELLO (or ERROR) first fails the handshake."""
    client = ClientHandshake(SECRET, CLIENT_NONCE, role="node")
    with pytest.raises(AuthenticationError, match=f"unexpected {frame.verb}"):
        client.receive(frame)
    assert client.state is HandshakeState.FAILED


def test_client_refuses_a_second_hello() -> None:
    """A second HELLO while the client awaits WELCOME is refused."""
    server, client = make_pair()
    hello = decode_one(server.hello())
    client.receive(hello)
    with pytest.raises(AuthenticationError, match="unexpected HELLO"):
        client.receive(hello)


def test_error_frame_without_message_still_fails_the_client() -> None:
    """An ERROR frame with no msg field fails the client with a generic message."""
    client = ClientHandshake(SECRET, CLIENT_NONCE, role="node")
    with pytest.raises(AuthenticationError, match="refused"):
        client.receive(Frame("ERROR"))
    assert client.state is HandshakeState.FAILED


def test_violations_are_protocol_errors() -> None:
    """ProtocolViolationError from a bad HELLO is a ProtocolError, so the shell disconnects."""
    assert issubclass(ProtocolViolationError, ProtocolError)


# --- the secret never travels ----------------------------------------------------------------


@pytest.mark.parametrize("role", sorted(ROLES))
def test_secret_never_appears_on_the_wire(role: str) -> None:
    """No byte string either side produces contains the secret, raw, hex or percent-encoded."""
    secret = b"s3cret-Value-\xe2\x9c\x93"
    server, client = make_pair(client_secret=secret, server_secret=secret, role=role)
    wire = b"".join(run(server, client))
    bad_server, bad_client = make_pair(client_secret=secret, server_secret=WRONG_SECRET)
    auth = bad_client.receive(decode_one(bad_server.hello()))
    with pytest.raises(AuthenticationError) as error:
        bad_server.receive(decode_one(auth))
    wire += auth + error.value.reply  # type: ignore[attr-defined]
    for form in (secret, secret.hex().encode(), b"s3cret", b"s3cret-Value-%E2%9C%93"):
        assert form not in wire
    assert WRONG_SECRET not in wire


# --- property tests --------------------------------------------------------------------------

hex_nonces = st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES).map(bytes.hex)
macs = st.one_of(
    st.text(max_size=80),
    st.binary(min_size=32, max_size=32).map(bytes.hex),
)
auth_fields = st.fixed_dictionaries(
    {},
    optional={
        "proto": st.sampled_from(["1", "0", "2", ""]),
        "role": st.one_of(st.sampled_from(sorted(ROLES)), st.text(max_size=12)),
        "user": st.text(max_size=20),
        "nonce": st.one_of(hex_nonces, st.text(max_size=70)),
        "mac": macs,
    },
)


@settings(max_examples=200, deadline=None)
@given(fields=auth_fields, server_user=st.one_of(st.none(), st.text(max_size=10)))
def test_property_random_auth_never_authenticates(fields: dict[str, str], server_user: str | None) -> None:
    """AUTH frames with random field values never authenticate without the right MAC."""
    server = ServerHandshake(SECRET, SERVER_NONCE, username=server_user)
    server.hello()
    with pytest.raises(AuthenticationError) as error:
        server.receive(Frame("AUTH", fields))
    assert server.state is HandshakeState.FAILED
    assert server.identity is None
    assert refusal(error).fields["code"] in {"auth", "version"}


@settings(max_examples=50, deadline=None)
@given(
    role=st.sampled_from(sorted(ROLES)),
    user=st.text(max_size=20),
    secret=st.binary(min_size=1, max_size=64),
    server_nonce=st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES),
    client_nonce=st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES),
)
def test_property_matching_secrets_always_authenticate(
    role: str, user: str, secret: bytes, server_nonce: bytes, client_nonce: bytes
) -> None:
    """Any role, user, secret and nonces authenticate when both sides share the secret."""
    server = ServerHandshake(secret, server_nonce, username=user)
    client = ClientHandshake(secret, client_nonce, role=role, username=user)
    run(server, client)
    assert server.identity == Identity(role, user)
    assert client.state is HandshakeState.AUTHENTICATED
