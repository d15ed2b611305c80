"""The batch engine agents run on: consumer groups, RocksDB tables with changelogs, batched produce.

The engine keeps Faust's shape — agents are small async functions over a stream, declared next to
their topic — but moves whole batches: one fetch, one produce per topic-partition, one RocksDB write
batch and one offset commit per batch, because per-event stream machinery and a produce awaited per
event cost more than most agents' own work (the README's benchmark section has the figures). It runs
inside the Faust worker as a Faust service.
"""

from streams.engine.context import AgentContext, Resources
from streams.engine.registry import agent, registered_agents
from streams.engine.runner import AgentRunner, AgentSpec
from streams.engine.state import BaseTable, Table
from streams.engine.stream import Batch, BatchStream, Record

__all__ = [
    "AgentContext",
    "AgentRunner",
    "AgentSpec",
    "BaseTable",
    "Batch",
    "BatchStream",
    "Record",
    "Resources",
    "Table",
    "agent",
    "registered_agents",
]
