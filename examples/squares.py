"""Square numbers on the cluster, then run a second job on the same cluster.

Run it as it is (an embedded local cluster is started), or point it at a real
cluster with ``ACHILLES_HOST``/``ACHILLES_SECRET_KEY`` or a ``.env``.
"""

from __future__ import annotations

from achilles_like import imap_unordered, map


def square(x: int) -> int:
    """The work: defined in __main__, so it is sent to the nodes by value."""
    return x * x


def negate(x: int) -> int:
    """achilles' callback: applied on the node to each result."""
    return -x


if __name__ == "__main__":
    print(map(square, range(10)))
    print(map(square, [1, 2, 3], callback=negate))
    print(sum(imap_unordered(square, range(10_000), chunksize=100)))
