"""Slowing down secret guessing without slowing down the people who hold the secret.

Every failed handshake spends from two budgets, one for its address and one
for the whole server. Each budget is a leaky bucket: it holds ``burst``
failures and drains at ``rate`` failures a second. While a bucket is full, a
new connection waits for its HELLO until one more failure would fit (at most
``max_delay`` seconds): a guesser gets ``rate`` guesses a second, however many
addresses it uses.

The legitimate user is the one who must not pay. A connection cannot be told
apart before its handshake, so an attacker on the user's own address (a
shared login node, one NAT) would make the user wait too. An address that
authenticated successfully within the last ``trust_window`` seconds is
therefore never delayed. That lets an attacker next to an active user guess
without delay; it still guesses at most as fast as the server answers, and a
secret of 128 bits (required beyond loopback) does not fall to that.

Pure: the time is passed in, so tests run an hour of failures in a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HandshakeBudget:
    """How many failed handshakes are free, how fast they refill, and how long anyone waits."""

    per_address_burst: float = 5.0  # failures one address may make before it waits
    per_address_rate: float = 0.5  # failures a second an address may make after that
    total_burst: float = 50.0  # failures all addresses together may make before new ones wait
    total_rate: float = 5.0  # failures a second for all addresses together after that
    max_delay: float = 5.0  # the longest any connection waits for its HELLO
    trust_window: float = 60.0  # an address that authenticated this recently never waits
    max_addresses: int = 10_000  # addresses remembered; bounded memory under a spoofed flood


@dataclass
class _Bucket:
    """A leaky bucket of failures: ``level`` at time ``at``, draining at a fixed rate."""

    level: float = 0.0
    at: float = 0.0

    def level_at(self, now: float, rate: float) -> float:
        return max(0.0, self.level - rate * max(0.0, now - self.at))

    def add(self, now: float, rate: float) -> None:
        self.level, self.at = self.level_at(now, rate) + 1.0, now

    def wait(self, now: float, rate: float, burst: float) -> float:
        """Seconds until one more failure fits under ``burst`` (0 if it fits now)."""
        over = self.level_at(now, rate) + 1.0 - burst
        return max(0.0, over / rate)


class FailedHandshakes:
    """The record of handshakes by address, and the wait it imposes on a new connection."""

    def __init__(self, budget: HandshakeBudget | None = None) -> None:
        self.budget = budget or HandshakeBudget()
        self._total = _Bucket()
        self._by_address: dict[str, _Bucket] = {}
        self._trusted_until: dict[str, float] = {}
        self.delayed = 0  # connections whose HELLO waited, since start

    def delay(self, host: str, now: float) -> float:
        """How long a new connection from ``host`` waits for HELLO now."""
        budget = self.budget
        if self._trusted_until.get(host, -1.0) >= now:
            return 0.0
        wait = self._total.wait(now, budget.total_rate, budget.total_burst)
        bucket = self._by_address.get(host)
        if bucket is not None:
            wait = max(wait, bucket.wait(now, budget.per_address_rate, budget.per_address_burst))
        return min(budget.max_delay, wait)

    def on_connect(self, host: str, now: float) -> float:
        """The wait for a connection from ``host`` that arrives now (counted in ``delayed``)."""
        wait = self.delay(host, now)
        self.delayed += wait > 0
        return wait

    def failed(self, host: str, now: float) -> None:
        """Spend one failure from ``host``'s budget and from the server's."""
        self._forget_if_full(now)
        self._total.add(now, self.budget.total_rate)
        self._by_address.setdefault(host, _Bucket()).add(now, self.budget.per_address_rate)

    def succeeded(self, host: str, now: float) -> None:
        """``host`` proved the secret: it does not wait for a while, whoever fails from there."""
        self._forget_if_full(now)
        self._by_address.pop(host, None)
        self._trusted_until[host] = now + self.budget.trust_window

    def slowed(self, now: float, limit: int = 20) -> dict[str, float]:
        """The addresses a new connection from which would wait now, and how long (longest first)."""
        waits = {host: self.delay(host, now) for host in self._by_address}
        slowest = sorted((item for item in waits.items() if item[1] > 0), key=lambda item: -item[1])
        return {host: round(wait, 3) for host, wait in slowest[:limit]}

    def _forget_if_full(self, now: float) -> None:
        """Keep memory bounded: drop drained and expired records first, everything if that is not enough."""
        budget = self.budget
        if len(self._by_address) + len(self._trusted_until) < budget.max_addresses:
            return
        rate = budget.per_address_rate
        self._by_address = {h: b for h, b in self._by_address.items() if b.level_at(now, rate) > 0}
        self._trusted_until = {h: t for h, t in self._trusted_until.items() if t >= now}
        if len(self._by_address) + len(self._trusted_until) >= budget.max_addresses:
            self._by_address.clear()
            self._trusted_until.clear()
