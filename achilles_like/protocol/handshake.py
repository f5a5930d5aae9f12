"""Mutual HMAC-SHA256 challenge-response on the cluster secret.

::

    server                                   peer (node, controller, admin)
      HELLO proto=1 nonce=Ns          ──▶
                                      ◀──    AUTH proto=1 role=R user=U nonce=Nc mac=Mc
      WELCOME mac=Ms                  ──▶    (or ERROR code=auth|version msg=...)

    Mc = HMAC(secret, "achilles_like/1 client" | Ns | Nc | R | U)
    Ms = HMAC(secret, "achilles_like/1 server" | Ns | Nc | R | U)

The peer proves it holds the secret against the server's fresh nonce, so a
recorded AUTH line is useless on another connection; the server then proves
it too, against the peer's nonce, because a node executes whatever its server
sends. The two MACs carry different labels, so one side's proof can never be
reflected back as the other's. The secret itself never crosses the wire and
every comparison is ``hmac.compare_digest``.

Both sides are sans-I/O: they take decoded frames and return the bytes to
send. Nonces are passed in (the shell draws them from ``secrets``) so tests
can replay a conversation exactly.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum

from achilles_like.errors import AuthenticationError, ProtocolViolationError
from achilles_like.protocol.frames import Frame, encode_frame

PROTOCOL_VERSION = 1
NONCE_BYTES = 32
ROLES = frozenset({"node", "controller", "admin"})


class HandshakeState(Enum):
    """Where a handshake stands; only AUTHENTICATED lets other frames through."""

    WAITING = "waiting"  # server: HELLO sent, AUTH expected; peer: HELLO expected
    PROVING = "proving"  # peer: AUTH sent, WELCOME expected
    AUTHENTICATED = "authenticated"
    FAILED = "failed"


@dataclass(frozen=True)
class Identity:
    """Who the server has just authenticated."""

    role: str
    username: str


def _mac(secret: bytes, label: str, server_nonce: str, client_nonce: str, role: str, user: str) -> str:
    message = "|".join((f"achilles_like/{PROTOCOL_VERSION} {label}", server_nonce, client_nonce, role, user))
    return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).hexdigest()


def _check_version(frame: Frame, side: str) -> None:
    theirs = frame.fields.get("proto", "?")
    if theirs != str(PROTOCOL_VERSION):
        raise AuthenticationError(
            f"protocol version mismatch: this {side} speaks version {PROTOCOL_VERSION},"
            f" the other side speaks version {theirs}; install the same achilles_like"
            " version on every machine"
        )


def _is_nonce(nonce: str) -> bool:
    return len(nonce) == 2 * NONCE_BYTES and all(c in "0123456789abcdef" for c in nonce)


def _check_nonce(nonce: str) -> None:
    if not _is_nonce(nonce):
        raise ProtocolViolationError("handshake nonce is not 64 lowercase hex digits")


class ServerHandshake:
    """The server's side: send HELLO, check AUTH, answer WELCOME or ERROR."""

    def __init__(self, secret: bytes, nonce: bytes, username: str | None = None) -> None:
        self._secret = secret
        self._nonce = nonce.hex()
        self._username = username or None
        self.state = HandshakeState.WAITING
        self.identity: Identity | None = None

    @property
    def authenticated(self) -> bool:
        """Whether the peer has proved it holds the secret."""
        return self.state is HandshakeState.AUTHENTICATED

    def hello(self) -> bytes:
        """The first frame the server sends on a new connection."""
        return encode_frame("HELLO", proto=PROTOCOL_VERSION, nonce=self._nonce)

    def receive(self, frame: Frame) -> bytes:
        """Check the peer's AUTH frame and return WELCOME.

        Raises :class:`AuthenticationError` whose ``reply`` attribute holds the
        ERROR frame to send before disconnecting.
        """
        if self.state is not HandshakeState.WAITING or frame.verb != "AUTH":
            return self._fail("auth", f"expected AUTH before anything else, got {frame.verb}")
        try:
            _check_version(frame, "server")
        except AuthenticationError as error:
            return self._fail("version", str(error))
        role, user = frame.fields.get("role", ""), frame.fields.get("user", "")
        client_nonce, mac = frame.fields.get("nonce", ""), frame.fields.get("mac", "")
        expected = _mac(self._secret, "client", self._nonce, client_nonce, role, user)
        valid = hmac.compare_digest(expected.encode(), mac.encode())
        if not valid or role not in ROLES or not _is_nonce(client_nonce):
            return self._fail("auth", "authentication failed: check SECRET_KEY")
        if self._username is not None and role != "node" and user != self._username:
            return self._fail("auth", "authentication failed: check USERNAME")
        self.state = HandshakeState.AUTHENTICATED
        self.identity = Identity(role, user)
        proof = _mac(self._secret, "server", self._nonce, client_nonce, role, user)
        return encode_frame("WELCOME", proto=PROTOCOL_VERSION, mac=proof)

    def _fail(self, code: str, message: str) -> bytes:
        self.state = HandshakeState.FAILED
        error = AuthenticationError(message)
        error.reply = encode_frame("ERROR", code=code, msg=message)  # type: ignore[attr-defined]
        raise error


class ClientHandshake:
    """A peer's side: answer HELLO with AUTH, then check the server's WELCOME."""

    def __init__(self, secret: bytes, nonce: bytes, role: str, username: str = "") -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {sorted(ROLES)}, not {role!r}")
        self._secret = secret
        self._nonce = nonce.hex()
        self._role = role
        self._user = username
        self._server_nonce = ""
        self.state = HandshakeState.WAITING

    @property
    def authenticated(self) -> bool:
        """Whether the server has proved it holds the secret."""
        return self.state is HandshakeState.AUTHENTICATED

    def receive(self, frame: Frame) -> bytes:
        """Handle HELLO (returns AUTH to send) or WELCOME/ERROR (returns nothing)."""
        if frame.verb == "ERROR":
            self.state = HandshakeState.FAILED
            raise AuthenticationError(frame.fields.get("msg", "the server refused the handshake"))
        if self.state is HandshakeState.WAITING and frame.verb == "HELLO":
            return self._answer_hello(frame)
        if self.state is HandshakeState.PROVING and frame.verb == "WELCOME":
            return self._check_welcome(frame)
        self.state = HandshakeState.FAILED
        raise AuthenticationError(f"unexpected {frame.verb} frame during the handshake")

    def _answer_hello(self, frame: Frame) -> bytes:
        try:
            _check_version(frame, "client")
            _check_nonce(frame.fields.get("nonce", ""))
        except (AuthenticationError, ProtocolViolationError):
            self.state = HandshakeState.FAILED
            raise
        self._server_nonce = frame.fields["nonce"]
        self.state = HandshakeState.PROVING
        mac = _mac(self._secret, "client", self._server_nonce, self._nonce, self._role, self._user)
        return encode_frame(
            "AUTH", proto=PROTOCOL_VERSION, role=self._role, user=self._user, nonce=self._nonce, mac=mac
        )

    def _check_welcome(self, frame: Frame) -> bytes:
        expected = _mac(self._secret, "server", self._server_nonce, self._nonce, self._role, self._user)
        if not hmac.compare_digest(expected.encode(), frame.fields.get("mac", "").encode()):
            self.state = HandshakeState.FAILED
            raise AuthenticationError(
                "authentication failed: the server could not prove it knows SECRET_KEY"
                " (wrong secret, or not the server you meant)"
            )
        self.state = HandshakeState.AUTHENTICATED
        return b""
