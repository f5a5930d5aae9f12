"""Count words in many lines lazily: a generator function feeds imap_unordered."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from achilles_like import imap_unordered


def lines() -> Iterator[str]:
    """Stand-in for reading a large file line by line."""
    for i in range(20_000):
        yield f"the quick brown fox {i % 7} jumps over the lazy dog"


def count_words(line: str) -> Counter[str]:
    """Count the words of one line."""
    return Counter(line.split())


if __name__ == "__main__":
    total: Counter[str] = Counter()
    for counts in imap_unordered(count_words, lines, chunksize=500):
        total.update(counts)
    print(total.most_common(5))
