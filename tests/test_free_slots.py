"""The scheduler's free-slot index against a brute-force recount."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from achilles_like.scheduling.free_slots import FreeSlots

OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "take", "give", "resize"]), st.integers(0, 7), st.integers(1, 5)
    ),
    max_size=200,
)


@given(OPS)
def test_freest_and_totals_match_a_recount(ops: list[tuple[str, int, int]]) -> None:
    """After any joins, losses, assignments, releases and resizes the freest node and the totals are exact."""
    index = FreeSlots()
    slots: dict[str, int] = {}
    free: dict[str, int] = {}
    for op, n, amount in ops:
        node_id = f"n{n}"
        if op == "add" and node_id not in slots:
            index.add(node_id, amount)
            slots[node_id] = free[node_id] = amount
        elif op == "remove" and node_id in slots:
            index.remove(node_id)
            del slots[node_id], free[node_id]
        elif op in ("take", "give") and node_id in slots:
            # free[] is slots minus held: below zero after a resize under what a node holds.
            delta = (
                -min(amount, max(0, free[node_id]))
                if op == "take"
                else min(amount, slots[node_id] - free[node_id])
            )
            index.change(node_id, delta)
            free[node_id] += delta
        elif op == "resize" and node_id in slots:
            held = slots[node_id] - free[node_id]
            index.resize(node_id, amount)
            slots[node_id], free[node_id] = amount, amount - held
        usable = {node: max(0, count) for node, count in free.items()}
        freest = index.freest()
        most = max(usable.values(), default=0)
        assert (freest is None) == (most == 0)
        assert freest is None or usable[freest] == most
        assert (index.total_slots, index.total_free) == (sum(slots.values()), sum(usable.values()))
        assert index.free_nodes == sum(1 for count in usable.values() if count)
        assert index.recount() == (index.total_slots, index.total_free, index.free_nodes)


def test_equal_nodes_take_turns() -> None:
    """Among nodes with as many free slots, the one that reached that count first comes first."""
    index = FreeSlots()
    for node_id in ("a", "b", "c"):
        index.add(node_id, 2)
    order = []
    for _ in range(6):
        node_id = index.freest()
        assert node_id is not None
        order.append(node_id)
        index.change(node_id, -1)
    assert order == ["a", "b", "c", "a", "b", "c"]
    assert index.freest() is None
