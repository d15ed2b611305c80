"""The batch engine agents run on: consumer groups, RocksDB tables with changelogs, batched produce.

Faust's per-event stream machinery tops out near 10,000 events/s on these machines before an agent
does any work, and a naive agent that awaits each produce does about 2,000/s. The engine keeps
Faust's shape — agents are small async functions over a stream, declared next to their topic —
but moves whole batches: one fetch, one produce per topic-partition, one RocksDB write batch and one
offset commit per batch. It runs inside the Faust worker as a Faust service.
"""

from streams.engine.registry import agent, registered_agents
from streams.engine.runner import AgentRunner, AgentSpec
from streams.engine.state import Table
from streams.engine.stream import Batch, BatchStream, Record

__all__ = [
    "AgentRunner",
    "AgentSpec",
    "Batch",
    "BatchStream",
    "Record",
    "Table",
    "agent",
    "registered_agents",
]
