"""The node role: an agent per machine (``agent``), its watched worker processes
(``worker_pool``, in the node's process) and what runs inside each worker
process (``in_worker``)."""

from __future__ import annotations

from achilles_like.node.agent import runAchillesNode, start_node

__all__ = ["runAchillesNode", "start_node"]
