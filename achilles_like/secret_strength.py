"""A conservative estimate of a secret's strength, and the policy built on it.

A node sends its MAC to whoever answers its connection, so anyone who can
get one handshake line can try guesses offline as fast as HMAC-SHA256 runs
(``password`` falls in under a second). Beyond loopback a secret must
therefore carry at least :data:`MIN_BITS` bits by an estimate that errs
low; on loopback (only this machine's users can connect) a weak secret is
only warned about.

The estimate counts the character classes a secret uses (lowercase,
uppercase, digits, others) as its alphabet, and its length — but only as
far as its characters are varied (a repeated character or a long run of
letters adds little). ``secrets.token_urlsafe(32)`` (what ``achilles
genconfig`` writes) scores over 200 bits; 22 random URL-safe characters
score about 128; dictionary words and short passwords score far below.
"""

from __future__ import annotations

import logging
import math
import string

from achilles_like.config import LOOPBACK_HOSTS, Settings
from achilles_like.errors import ConfigurationError

MIN_BITS = 128

log = logging.getLogger("achilles_like.secret")
_warned: set[tuple[str, str]] = set()

_CLASSES = (
    (frozenset(string.ascii_lowercase), 26),
    (frozenset(string.ascii_uppercase), 26),
    (frozenset(string.digits), 10),
)


def estimated_bits(secret: str) -> float:
    """Bits of entropy ``secret`` carries at most, estimated conservatively."""
    if not secret:
        return 0.0
    alphabet = sum(size for chars, size in _CLASSES if any(c in chars for c in secret))
    if any(not any(c in chars for chars, _ in _CLASSES) for c in secret):
        alphabet += 32  # punctuation and everything else
    # A character repeated, or a letter that only continues a word, adds little:
    # count the length only up to twice the number of distinct characters.
    effective = min(len(secret), 2 * len(set(secret)))
    if secret.isalpha():
        effective = min(effective, len(secret) // 2)  # letters only: likely words
    return effective * math.log2(alphabet)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def check_secret_strength(secret: str, host: str, role: str) -> None:
    """Refuse a weak ``secret`` for ``host`` beyond loopback; warn (once) on loopback."""
    bits = estimated_bits(secret)
    if bits >= MIN_BITS:
        return
    advice = (
        f"the {role}'s secret is weak (about {bits:.0f} bits by a conservative estimate, under"
        f" {MIN_BITS}): one captured handshake line lets anyone guess it offline. Make a strong"
        " one with `achilles genconfig` (or python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        " and use it on every machine"
    )
    if not is_loopback(host):
        raise ConfigurationError(f"refusing to use {host}: {advice}")
    if (role, host) not in _warned:
        _warned.add((role, host))
        log.warning("%s", advice)


def check_peer_secret(settings: Settings, role: str) -> None:
    """:func:`check_secret_strength` for a node or controller (a client certificate may stand in)."""
    if not settings.secret_key and settings.tls_cert and settings.client_tls:
        return  # mutual TLS without a secret: the certificate is the proof
    check_secret_strength(settings.secret_key, settings.host, role)
